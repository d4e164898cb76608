package service_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// There is no Docker engine to run the compose file here, so this checks
// what can be checked without one: every reference resolves, Temporal's
// images are the versions the project builds and tests against, the
// schema job runs before the server, health is checked with the temporal
// CLI, and the worker gets every variable it reads and nothing else.
func TestComposeFileReferences(t *testing.T) {
	root := filepath.Join("..", "..")
	data, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	require.NoError(t, err)
	var compose struct {
		Services map[string]struct {
			Image       string                                `yaml:"image"`
			Build       *struct{ Context, Dockerfile string } `yaml:"build"`
			DependsOn   map[string]struct{ Condition string } `yaml:"depends_on"`
			Environment map[string]string                     `yaml:"environment"`
			Healthcheck *struct{ Test []string }              `yaml:"healthcheck"`
			Volumes     []string                              `yaml:"volumes"`
			Ports       []string                              `yaml:"ports"`
			Command     []string                              `yaml:"command"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	require.NoError(t, yaml.Unmarshal(data, &compose))
	require.NotContains(t, string(data), "auto-setup", "temporalio/auto-setup is deprecated")
	require.NotContains(t, string(data), "tctl", "tctl is replaced by the temporal CLI")

	for _, want := range []string{"temporal-db", "temporal-schema", "temporal", "temporal-setup", "temporal-ui", "reconciler-db", "worker"} {
		require.Contains(t, compose.Services, want)
	}
	for name, svc := range compose.Services {
		for dep, cond := range svc.DependsOn {
			require.Contains(t, compose.Services, dep, "%s depends on %s", name, dep)
			if cond.Condition == "service_healthy" {
				require.NotNil(t, compose.Services[dep].Healthcheck, "%s waits for %s to be healthy but it has no healthcheck", name, dep)
			}
		}
		for _, v := range svc.Volumes {
			src := strings.Split(v, ":")[0]
			if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") && !strings.HasPrefix(src, "$") {
				require.Contains(t, compose.Volumes, src, "%s mounts undeclared volume %s", name, src)
			}
		}
		if svc.Build == nil {
			require.NotEmpty(t, svc.Image, name)
		}
	}

	// Versions: the server and its admin tools at go.temporal.io/server's
	// version, the UI at ui-server's.
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	version := func(module string) string {
		for _, line := range strings.Split(string(gomod), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == module {
				return strings.TrimPrefix(f[1], "v")
			}
		}
		t.Fatalf("go.mod does not require %s", module)
		return ""
	}
	server, ui := version("go.temporal.io/server"), version("github.com/temporalio/ui-server/v2")
	for name, want := range map[string]string{
		"temporal":        "temporalio/server:${TEMPORAL_VERSION:-" + server + "}",
		"temporal-schema": "temporalio/admin-tools:${TEMPORAL_VERSION:-" + server + "}",
		"temporal-setup":  "temporalio/admin-tools:${TEMPORAL_VERSION:-" + server + "}",
		"temporal-ui":     "temporalio/ui:${TEMPORAL_UI_VERSION:-" + ui + "}",
	} {
		require.Equal(t, want, compose.Services[name].Image, name)
	}

	// The schema is set up by Temporal's SQL tool before the server starts,
	// for persistence and visibility.
	require.Equal(t, "service_completed_successfully", compose.Services["temporal"].DependsOn["temporal-schema"].Condition)
	schema := strings.Join(compose.Services["temporal-schema"].Command, "\n")
	for _, want := range []string{"temporal-sql-tool", "--plugin postgres12", "temporal_visibility", "setup-schema", "update-schema"} {
		require.Contains(t, schema, want)
	}
	require.Equal(t, "temporal-db", compose.Services["temporal"].Environment["POSTGRES_SEEDS"])
	// The server refuses to start without its dynamic config file (found by
	// the production-shaped tests in internal/faults, which run the server
	// with this environment).
	dynamic := compose.Services["temporal"].Environment["DYNAMIC_CONFIG_FILE_PATH"]
	require.NotEmpty(t, dynamic)
	require.Contains(t, string(data), "target: "+dynamic, "the dynamic config file is mounted where the server reads it")

	// Health with the temporal CLI (from the admin tools: the server image
	// has only the server), the namespace and the search attributes the
	// workflows set, before the UI and any worker start.
	require.NotNil(t, compose.Services["temporal"].Healthcheck)
	setup := strings.Join(compose.Services["temporal-setup"].Command, "\n")
	require.Contains(t, setup, "until temporal operator cluster health")
	require.Equal(t, "service_completed_successfully", compose.Services["temporal-ui"].DependsOn["temporal-setup"].Condition)
	for name := range workflows.SearchAttributes() {
		require.Contains(t, setup, name, "temporal-setup creates the search attribute %s", name)
	}

	w := compose.Services["worker"]
	require.NotNil(t, w.Build)
	require.Equal(t, "service_completed_successfully", w.DependsOn["temporal-setup"].Condition)
	require.Equal(t, "service_healthy", w.DependsOn["reconciler-db"].Condition)
	ctxDir := filepath.Join(root, w.Build.Context)
	dockerfile, err := os.ReadFile(filepath.Join(ctxDir, w.Build.Dockerfile))
	require.NoError(t, err)
	for _, line := range strings.Split(string(dockerfile), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "./") && (strings.Contains(line, "go build")) {
				_, err := os.Stat(filepath.Join(ctxDir, f))
				require.NoError(t, err, "Dockerfile builds %s", f)
			}
		}
	}
	for name := range w.Environment {
		known := slices.Contains(service.Variables, name) ||
			strings.HasPrefix(name, "TEMPORAL_") || strings.HasPrefix(name, "AWS_")
		require.True(t, known, "the worker does not read %s", name)
	}
	for _, name := range service.Variables {
		require.Contains(t, w.Environment, name, "the compose file sets every variable the worker reads")
	}
	require.Contains(t, w.Environment["DATABASE_URL"], "@reconciler-db:")
	require.Equal(t, "temporal:7233", w.Environment["TEMPORAL_ADDRESS"])
	for _, secret := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} {
		require.True(t, strings.HasPrefix(w.Environment[secret], "${"), "%s comes from the host's environment, not the file", secret)
	}
	_, port, ok := strings.Cut(w.Environment["METRICS_ADDR"], ":")
	require.True(t, ok)
	require.Contains(t, w.Ports, port, "the metrics port is published")
	require.Contains(t, strings.Join(w.Volumes, " "), ":/catalog:ro", "the catalog is mounted read-only")
	require.Equal(t, "/catalog", w.Environment["CATALOG_DIR"])
}
