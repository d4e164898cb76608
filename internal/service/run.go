package service

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Run runs a worker with cfg until SIGINT or SIGTERM: Temporal's client from
// the SDK's environment configuration, AWS from the SDK's standard chain,
// the metrics endpoint, and the workflows and activities registered on the
// shared task queue and on the worker's own box queue. On the signal both
// stop polling and it returns once the activities in
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
	if cfg.ProfileAddr != "" {
		addr, err := ServeProfiles(ctx, cfg.ProfileAddr)
		if err != nil {
			return err
		}
		logger.Info("profiles at http://" + addr + "/debug/pprof/")
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
	// Both workers stop polling at the signal and drain together.
	workers := svc.Workers(c)
	for _, w := range workers[1:] {
		if err := w.Start(); err != nil {
			return err
		}
	}
	logger.Info("worker started", "task_queue", workflows.TaskQueue, "box_queue", svc.BoxQueue(), "eic_mode", cfg.AccessMode, "restart_mode", cfg.RestartMode, "stop_timeout", cfg.StopTimeout.String())
	stop := make(chan any)
	var once sync.Once
	halt := func() { once.Do(func() { close(stop) }) }
	go func() { <-worker.InterruptCh(); halt() }()
	var drained sync.WaitGroup
	for _, w := range workers[1:] {
		drained.Go(func() { <-stop; w.Stop() })
	}
	err = workers[0].Run(stop)
	halt()
	drained.Wait()
	logger.Info("worker stopped", "error", err)
	return err
}
