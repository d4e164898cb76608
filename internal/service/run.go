package service

import (
	"context"
	"fmt"
	"log/slog"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Run runs a worker with cfg until SIGINT or SIGTERM: Temporal's client from
// the SDK's environment configuration, AWS from the SDK's standard chain,
// the metrics endpoint, and the workflows and activities registered. On
// the signal the worker stops polling and returns once the activities in
// flight have finished, or after the stop timeout (WorkerStopTimeout): a
// deploy drains a restart in flight instead of cutting it short. Past the
// timeout an activity is cancelled; the restart protocol makes its retry
// safe.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {

	awsCfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return fmt.Errorf("aws configuration: %w", err)
	}
	svc, err := New(ctx, cfg, awsCfg, logger)
	if err != nil {
		return err
	}
	defer svc.Close()
	if cfg.MetricsAddr != "" {
		addr, err := svc.Metrics.Serve(ctx, cfg.MetricsAddr)
		if err != nil {
			return err
		}
		logger.Info("metrics at http://" + addr + "/metrics")
	}

	copts, err := envconfig.LoadDefaultClientOptions()
	if err != nil {
		return fmt.Errorf("temporal client configuration: %w", err)
	}
	copts.Logger = tlog.NewStructuredLogger(logger)
	copts.MetricsHandler = svc.Metrics.Handler
	c, err := client.Dial(copts)
	if err != nil {
		return fmt.Errorf("connect to temporal: %w", err)
	}
	defer c.Close()

	// The workflows upsert their search attributes; make sure the namespace
	// has them (an operator call, which a restricted key may not make).
	ns := copts.Namespace
	if ns == "" {
		ns = client.DefaultNamespace
	}
	if err := workflows.EnsureSearchAttributes(ctx, c, ns); err != nil {
		logger.Warn("search attributes not registered; register them or reconciles will fail", "error", err)
	}
	w := worker.New(c, workflows.TaskQueue, svc.WorkerOptions())
	svc.Register(w)
	logger.Info("worker started", "task_queue", workflows.TaskQueue, "eic_mode", cfg.AccessMode, "restart_mode", cfg.RestartMode, "stop_timeout", cfg.StopTimeout.String())
	err = w.Run(worker.InterruptCh())
	logger.Info("worker stopped", "error", err)
	return err
}
