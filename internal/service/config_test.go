package service_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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
