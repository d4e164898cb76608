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
)

// There is no Docker engine to run the compose file here, so this checks
// what can be checked without one: every reference resolves and the worker
// gets exactly the variables it reads.
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
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	// depends_on is a list for temporal-ui: accept both forms by decoding
	// that service separately.
	var raw map[string]any
	require.NoError(t, yaml.Unmarshal(data, &raw))
	services := raw["services"].(map[string]any)
	for name, svc := range services {
		if deps, ok := svc.(map[string]any)["depends_on"].([]any); ok {
			m := map[string]any{}
			for _, d := range deps {
				m[d.(string)] = map[string]any{"condition": "service_started"}
			}
			svc.(map[string]any)["depends_on"] = m
			services[name] = svc
		}
	}
	norm, err := yaml.Marshal(raw)
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(norm, &compose))

	for _, want := range []string{"temporal", "temporal-ui", "temporal-db", "reconciler-db", "worker"} {
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
			if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
				require.Contains(t, compose.Volumes, src, "%s mounts undeclared volume %s", name, src)
			}
		}
		if svc.Build == nil {
			require.NotEmpty(t, svc.Image, name)
		}
	}
	require.NotNil(t, compose.Services["reconciler-db"].Healthcheck)

	w := compose.Services["worker"]
	require.NotNil(t, w.Build)
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
	require.Contains(t, w.Environment, "DATABASE_URL")
	require.Contains(t, w.Environment["DATABASE_URL"], "@reconciler-db:")
	require.Equal(t, "temporal:7233", w.Environment["TEMPORAL_ADDRESS"])
}
