package service_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
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
	require.Empty(t, service.FromEnv().MetricsAddr)
}

func TestStopTimeoutCoversARestart(t *testing.T) {
	cfg := service.FromEnv()
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
	cfg := service.FromEnv()
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
