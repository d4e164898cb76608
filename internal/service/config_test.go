package service_test

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"go.temporal.io/server/common/testing/freeport"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// METRICS_ADDR set to nothing turns the endpoint off (two workers on one
// host must not fight over the default port); unset, it has its default.
func TestEmptyMetricsAddrDisablesMetrics(t *testing.T) {
	t.Setenv("METRICS_ADDR", "")
	cfg, err := service.FromEnv()
	require.NoError(t, err)
	require.Empty(t, cfg.MetricsAddr)
	t.Setenv("CATALOG_DIR", "")
	cfg, err = service.FromEnv()
	require.NoError(t, err)
	require.Equal(t, "./catalog", cfg.CatalogDir, "nothing means the default elsewhere")
}

// A value that does not parse is an error naming the variable, not a
// silent default.
func TestBadSettingIsNamed(t *testing.T) {
	for env, val := range map[string]string{"SSH_PORT": "twenty-two", "MIGRATE": "maybe", "WORKER_STOP_TIMEOUT": "10"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, val)
			_, err := service.FromEnv()
			require.ErrorContains(t, err, env)
			require.ErrorContains(t, err, val)
		})
	}
}

// Flags override the environment, each under its documented name.
func TestFlagsOverrideTheEnvironment(t *testing.T) {
	t.Setenv("SSH_PORT", "2222")
	cfg, err := service.FromEnv()
	require.NoError(t, err)
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	cfg.Flags(fs)
	require.NoError(t, fs.Parse([]string{"--ssh-port", "22", "--migrate=false", "--stop-timeout", "15m"}))
	require.Equal(t, 22, cfg.SSHPort)
	require.False(t, cfg.Migrate)
	require.Equal(t, 15*time.Minute, cfg.StopTimeout)
}

// The README's table is the configuration's own (between its markers).
func TestREADMEConfigurationTableIsTheCode(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	const begin, end = "<!-- configuration table: generated from internal/service/config.go -->\n", "<!-- end of configuration table -->"
	readme := string(data)
	i, j := strings.Index(readme, begin), strings.Index(readme, end)
	require.True(t, i >= 0 && j > i, "README.md has no configuration table markers")
	require.Equal(t, service.ConfigTable(), readme[i+len(begin):j], "README's table differs from internal/service/config.go")
}

func TestStopTimeoutCoversARestart(t *testing.T) {
	cfg := service.Defaults()
	cfg.DatabaseURL = "postgres://x"
	require.Equal(t, workflows.RestartAttemptTimeout, cfg.StopTimeout)
	require.NoError(t, cfg.Validate())
	cfg.StopTimeout = 30 * time.Second
	require.ErrorContains(t, cfg.Validate(), "WORKER_STOP_TIMEOUT 30s is shorter than a restart attempt")
}

// A worker started while Postgres is down waits for it instead of exiting.
func TestWorkerWaitsForTheDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Postgres")
	}
	dir := t.TempDir()
	port := freeport.MustGetFreePort()
	cfg := service.Defaults()
	cfg.DatabaseURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	cfg.CatalogDir = t.TempDir()
	done := make(chan error, 1)
	var svc *service.Service
	go func() {
		var err error
		svc, err = service.New(context.Background(), cfg, aws.Config{Region: "us-east-1"}, slog.New(slog.DiscardHandler))
		done <- err
	}()
	time.Sleep(2 * time.Second) // the worker is waiting
	select {
	case err := <-done:
		t.Fatalf("the worker did not wait for the database: %v", err)
	default:
	}
	pg, err := pgcluster.Start(context.Background(), filepath.Join(dir, "pg"), port)
	require.NoError(t, err)
	t.Cleanup(pg.Stop)
	select {
	case err := <-done:
		require.NoError(t, err)
		svc.Close()
	case <-time.After(time.Minute):
		t.Fatal("the worker did not start once the database was up")
	}
}
