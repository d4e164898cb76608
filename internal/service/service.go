// Package service wires the reconciler's worker: configuration from the
// environment and flags, the store, box access, the catalog, and the
// registration of workflows and activities. The worker program and the end
// to end tests build the worker through it, so both run the same wiring.
package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/jackc/pgx/v5/pgconn"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/migrations"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Validate names the first bad setting.
func (c Config) Validate() error {
	switch {
	case c.DatabaseURL == "":
		return errors.New("DATABASE_URL (or --database-url) is required")
	case c.RestartMode != activities.RestartRuntime && c.RestartMode != activities.RestartReboot:
		return fmt.Errorf("RESTART_MODE %q must be runtime or reboot", c.RestartMode)
	case c.AccessMode != string(eic.Direct) && c.AccessMode != string(eic.Endpoint):
		return fmt.Errorf("EIC_MODE %q must be direct or endpoint", c.AccessMode)
	case c.AccessMode == string(eic.Endpoint) && c.EndpointID == "":
		return errors.New("EIC_MODE=endpoint needs EIC_ENDPOINT_ID")
	case c.StopTimeout < workflows.RestartAttemptTimeout:
		return fmt.Errorf("WORKER_STOP_TIMEOUT %s is shorter than a restart attempt may take (%s): a deploy would cut restarts short", c.StopTimeout, workflows.RestartAttemptTimeout)
	}
	return nil
}

// Service is a wired worker's dependencies.
type Service struct {
	Store      *store.Store
	Access     *eic.Access
	Box        *onbox.Ops
	Activities *activities.Activities
	Metrics    *Metrics
	// Identity names this worker to Temporal (its pollers carry it), and
	// its own task queue for box work, BoxQueue, after it.
	Identity string
	cfg      Config
}

// New connects to Postgres (migrating it unless told not to), opens the
// catalog and sets up box access with the given AWS configuration.
func New(ctx context.Context, cfg Config, awsCfg aws.Config, logger *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Migrate {
		var v int32
		err := waitForDatabase(ctx, logger, func() (err error) {
			v, err = migrations.Apply(ctx, cfg.DatabaseURL)
			return err
		})
		if err != nil {
			return nil, err
		}
		logger.Info("database schema ready", "version", v)
	}
	var st *store.Store
	err := waitForDatabase(ctx, logger, func() (err error) {
		st, err = store.Open(ctx, cfg.DatabaseURL)
		return err
	})
	if err != nil {
		return nil, err
	}
	cat, err := catalog.New(cfg.CatalogDir)
	if err != nil {
		st.Close()
		return nil, err
	}
	access, err := eic.New(eic.Config{
		EC2:              ec2.NewFromConfig(awsCfg),
		InstanceConnect:  ec2instanceconnect.NewFromConfig(awsCfg),
		Mode:             eic.Mode(cfg.AccessMode),
		Port:             cfg.SSHPort,
		EndpointID:       cfg.EndpointID,
		EndpointURL:      cfg.EndpointURL,
		Credentials:      awsCfg.Credentials,
		Region:           awsCfg.Region,
		RecordHostKey:    st.RecordHostKey,
		DialPerOperation: cfg.DialPerOperation,
		Logger:           logger,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	box := onbox.New(access, onbox.Config{RestartCommand: cfg.RestartCommand, IdentityCommand: cfg.IdentityCommand, Logger: logger})
	m, err := newMetrics(access)
	if err != nil {
		_ = access.Close()
		st.Close()
		return nil, err
	}
	return &Service{
		Identity:   newIdentity(),
		Store:      st,
		Access:     access,
		Box:        box,
		Activities: &activities.Activities{Box: box, Store: st, Catalog: cat, RestartMode: cfg.RestartMode},
		Metrics:    m,
		cfg:        cfg,
	}, nil
}

// DatabaseWait is how long a starting worker waits for Postgres to
// answer: a worker deployed while the database restarts waits for it
// instead of exiting (and leaving no worker, once the old ones drained).
const DatabaseWait = 5 * time.Minute

// waitForDatabase runs fn until it succeeds, retrying while Postgres is
// not there (a refused or cut connection, a server starting up or shutting
// down, out of connections), for up to DatabaseWait. Any other answer (a
// wrong password, a missing database) is final.
func waitForDatabase(ctx context.Context, logger *slog.Logger, fn func() error) error {
	deadline := time.Now().Add(DatabaseWait)
	wait := 500 * time.Millisecond
	for {
		err := fn()
		if err == nil || !databaseAway(err) || time.Now().After(deadline) {
			return err
		}
		logger.Warn("waiting for the database", "error", err.Error(), "retry_in", wait.String())
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// databaseAway reports whether err says Postgres is not (yet, or any
// more) there, rather than refusing us.
func databaseAway(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true // no answer from a server at all
	}
	switch {
	case strings.HasPrefix(pgErr.Code, "08"): // connection exception
		return true
	case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // shutting down, crashed, starting up
		return true
	case pgErr.Code == "53300": // too many connections
		return true
	}
	return false
}

// Register registers the workflows and activities on a worker.
func (s *Service) Register(w worker.Registry) {
	w.RegisterWorkflow(workflows.ReconcileWorkspace)
	w.RegisterWorkflow(workflows.ReconcilePlugin)
	w.RegisterWorkflow(workflows.SweepFleet)
	w.RegisterActivity(s.Activities)
}

// BoxQueue is this worker's own task queue: the box work of the
// workspaces whose reconciles picked it (see workflows/route.go).
func (s *Service) BoxQueue() string { return reconcile.BoxQueue(s.Identity) }

// Workers are this worker's two Temporal workers, registered: one on the
// shared task queue (workflows, store work, and the box work of runs
// without a route) and one on its own box queue.
func (s *Service) Workers(c client.Client) []worker.Worker {
	shared := worker.New(c, workflows.TaskQueue, s.WorkerOptions())
	s.Register(shared)
	opts := s.WorkerOptions()
	opts.DisableWorkflowWorker = true // activities only: no workflow task pollers
	box := worker.New(c, s.BoxQueue(), opts)
	box.RegisterActivity(s.Activities)
	return []worker.Worker{shared, box}
}

// WorkerOptions are the worker's options for this configuration.
func (s *Service) WorkerOptions() worker.Options {
	o := WorkerOptions(s.cfg.MaxActivities)
	o.WorkerStopTimeout = s.cfg.StopTimeout
	o.Identity = s.Identity
	return o
}

// newIdentity is "pid@host@random": unique in a pool, so that no two
// workers share a box queue (containers all run as pid 1).
func newIdentity() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%d@%s@%s", os.Getpid(), host, hex.EncodeToString(b[:]))
}

// WorkerOptions are the reconciler worker's options with maxActivities
// concurrent activities (the benchmark's floor worker uses them too).
func WorkerOptions(maxActivities int) worker.Options {
	return worker.Options{
		MaxConcurrentActivityExecutionSize: maxActivities,
		// A reconcile is many short workflow tasks (a parent and a child
		// per plugin): more pollers keep them flowing.
		MaxConcurrentWorkflowTaskPollers: 4,
		MaxConcurrentActivityTaskPollers: 4,
		// Stopping (SIGTERM, a deploy) stops polling at once and lets the
		// activities in flight finish, a restart included, for this long.
		WorkerStopTimeout: workflows.RestartAttemptTimeout,
	}
}

// Close releases connections.
func (s *Service) Close() {
	_ = s.Metrics.closer()
	s.Box.Close()
	_ = s.Access.Close()
	s.Store.Close()
}
