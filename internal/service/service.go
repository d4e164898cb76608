// Package service wires the reconciler's worker: configuration from the
// environment and flags, the store, box access, the catalog, and the
// registration of workflows and activities. The worker program and the end
// to end tests build the worker through it, so both run the same wiring.
package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/jackc/pgx/v5/pgconn"
	"go.temporal.io/sdk/worker"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/migrations"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Config is the worker's configuration. Temporal's own settings come from
// the SDK's envconfig (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, …) and AWS's
// from the SDK's standard chain (AWS_REGION, AWS_ENDPOINT_URL_EC2, …).
type Config struct {
	DatabaseURL     string // DATABASE_URL
	CatalogDir      string // CATALOG_DIR
	Migrate         bool   // MIGRATE (default true): apply migrations at start
	AccessMode      string // EIC_MODE: direct or endpoint
	SSHPort         int    // SSH_PORT (default 22)
	EndpointID      string // EIC_ENDPOINT_ID
	EndpointURL     string // EIC_ENDPOINT_URL (override of the endpoint's websocket base)
	RestartMode     string // RESTART_MODE: runtime or reboot
	RestartCommand  string // RESTART_COMMAND
	IdentityCommand string // IDENTITY_COMMAND
	MaxActivities   int    // MAX_CONCURRENT_ACTIVITIES (default 64)
	MetricsAddr     string // METRICS_ADDR (default 127.0.0.1:9464; empty string disables)
	// StopTimeout (WORKER_STOP_TIMEOUT) is how long the worker drains on
	// SIGTERM: activities in flight finish first. At least the longest
	// restart attempt (workflows.RestartAttemptTimeout), its default.
	StopTimeout time.Duration
	// DialPerOperation (neither a variable nor a flag: the benchmark's
	// naive worker sets it) opens one connection and pushes one key per
	// operation.
	DialPerOperation bool
}

// Variables lists every environment variable the worker reads itself.
var Variables = []string{
	"DATABASE_URL", "CATALOG_DIR", "MIGRATE", "EIC_MODE", "SSH_PORT", "EIC_ENDPOINT_ID",
	"EIC_ENDPOINT_URL", "RESTART_MODE", "RESTART_COMMAND", "IDENTITY_COMMAND", "MAX_CONCURRENT_ACTIVITIES",
	"METRICS_ADDR", "WORKER_STOP_TIMEOUT",
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// envSetOr is the variable's value when it is set, even to "" (which
// turns the setting off), else def.
func envSetOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// FromEnv reads the configuration from the environment.
func FromEnv() Config {
	return Config{
		DatabaseURL:     os.Getenv("DATABASE_URL"),
		CatalogDir:      envOr("CATALOG_DIR", "./catalog"),
		Migrate:         envOr("MIGRATE", "true") != "false",
		AccessMode:      envOr("EIC_MODE", string(eic.Direct)),
		SSHPort:         envInt("SSH_PORT", 22),
		EndpointID:      os.Getenv("EIC_ENDPOINT_ID"),
		EndpointURL:     os.Getenv("EIC_ENDPOINT_URL"),
		RestartMode:     envOr("RESTART_MODE", activities.RestartRuntime),
		RestartCommand:  envOr("RESTART_COMMAND", onbox.DefaultRestartCommand),
		IdentityCommand: envOr("IDENTITY_COMMAND", onbox.DefaultIdentityCommand),
		MaxActivities:   envInt("MAX_CONCURRENT_ACTIVITIES", 64),
		MetricsAddr:     envSetOr("METRICS_ADDR", "127.0.0.1:9464"),
		StopTimeout:     envDuration("WORKER_STOP_TIMEOUT", workflows.RestartAttemptTimeout),
	}
}

// Flags binds flags that override c (whose values are the defaults).
func (c *Config) Flags(fs *flag.FlagSet) {
	fs.StringVar(&c.DatabaseURL, "database-url", c.DatabaseURL, "Postgres connection string (DATABASE_URL)")
	fs.StringVar(&c.CatalogDir, "catalog", c.CatalogDir, "plugin catalog directory (CATALOG_DIR)")
	fs.BoolVar(&c.Migrate, "migrate", c.Migrate, "apply database migrations at start (MIGRATE)")
	fs.StringVar(&c.AccessMode, "eic-mode", c.AccessMode, "how to reach boxes: direct or endpoint (EIC_MODE)")
	fs.IntVar(&c.SSHPort, "ssh-port", c.SSHPort, "sshd port on the boxes (SSH_PORT)")
	fs.StringVar(&c.EndpointID, "eic-endpoint-id", c.EndpointID, "EC2 Instance Connect Endpoint id (EIC_ENDPOINT_ID)")
	fs.StringVar(&c.EndpointURL, "eic-endpoint-url", c.EndpointURL, "override of the endpoint's websocket URL (EIC_ENDPOINT_URL)")
	fs.StringVar(&c.RestartMode, "restart-mode", c.RestartMode, "runtime (restart command over SSH) or reboot (EC2) (RESTART_MODE)")
	fs.StringVar(&c.RestartCommand, "restart-command", c.RestartCommand, "command that restarts the runtime on a box (RESTART_COMMAND)")
	fs.StringVar(&c.IdentityCommand, "identity-command", c.IdentityCommand, "command that prints the runtime's identity (IDENTITY_COMMAND)")
	fs.IntVar(&c.MaxActivities, "max-activities", c.MaxActivities, "concurrent activities per worker (MAX_CONCURRENT_ACTIVITIES)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "address of the Prometheus /metrics endpoint (METRICS_ADDR)")
	fs.DurationVar(&c.StopTimeout, "stop-timeout", c.StopTimeout, "how long to drain activities on SIGTERM (WORKER_STOP_TIMEOUT)")
}

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
	cfg        Config
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

// WorkerOptions are the worker's options for this configuration.
func (s *Service) WorkerOptions() worker.Options {
	o := WorkerOptions(s.cfg.MaxActivities)
	o.WorkerStopTimeout = s.cfg.StopTimeout
	return o
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
