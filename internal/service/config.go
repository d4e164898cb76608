package service

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Config is the worker's configuration. Temporal's own settings come from
// the SDK's envconfig (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, …) and AWS's
// from the SDK's standard chain (AWS_REGION, AWS_ENDPOINT_URL_EC2, …).
// Every other setting is declared once, in settings, which drives the
// environment, the flags and the README's table.
type Config struct {
	DatabaseURL     string
	CatalogDir      string
	Migrate         bool
	AccessMode      string
	SSHPort         int
	EndpointID      string
	EndpointURL     string
	RestartMode     string
	RestartCommand  string
	IdentityCommand string
	MaxActivities   int
	MetricsAddr     string
	ProfileAddr     string
	StopTimeout     time.Duration
	// DialPerOperation (neither a variable nor a flag: the benchmark's
	// naive worker sets it) opens one connection and pushes one key per
	// operation.
	DialPerOperation bool
}

// setting is one configuration setting: its variable, its flag, its
// default, what it means, and the field it sets (a *string, *int, *bool
// or *time.Duration of a Config).
type setting struct {
	Env, Flag, Default, Meaning string
	// EmptyOff: the variable set to nothing turns the setting off (it
	// takes the value ""); otherwise nothing means the default.
	EmptyOff bool
	field    func(*Config) any
}

var settings = []setting{
	{"DATABASE_URL", "database-url", "", "the reconciler's Postgres (required)", false, func(c *Config) any { return &c.DatabaseURL }},
	{"CATALOG_DIR", "catalog", "./catalog", "plugin bundles: `<dir>/<name>/<version>/plugin.yaml` and files", false, func(c *Config) any { return &c.CatalogDir }},
	{"MIGRATE", "migrate", "true", "apply migrations at start (safe with several workers)", false, func(c *Config) any { return &c.Migrate }},
	{"EIC_MODE", "eic-mode", string(eic.Direct), "`direct` (private IP, worker in the VPC) or `endpoint` (EIC Endpoint tunnel)", false, func(c *Config) any { return &c.AccessMode }},
	{"EIC_ENDPOINT_ID", "eic-endpoint-id", "", "the EC2 Instance Connect Endpoint, for `endpoint`", false, func(c *Config) any { return &c.EndpointID }},
	{"EIC_ENDPOINT_URL", "eic-endpoint-url", "", "override of the endpoint's websocket URL (derived from the id by default)", false, func(c *Config) any { return &c.EndpointURL }},
	{"SSH_PORT", "ssh-port", "22", "sshd port on the boxes", false, func(c *Config) any { return &c.SSHPort }},
	{"RESTART_MODE", "restart-mode", activities.RestartRuntime, "`runtime` (restart command over SSH) or `reboot` (EC2 RebootInstances)", false, func(c *Config) any { return &c.RestartMode }},
	{"RESTART_COMMAND", "restart-command", onbox.DefaultRestartCommand, "restarts the runtime", false, func(c *Config) any { return &c.RestartCommand }},
	{"IDENTITY_COMMAND", "identity-command", onbox.DefaultIdentityCommand, "prints one word that changes on every runtime start", false, func(c *Config) any { return &c.IdentityCommand }},
	{"MAX_CONCURRENT_ACTIVITIES", "max-activities", "64", "concurrent activities per worker", false, func(c *Config) any { return &c.MaxActivities }},
	{"METRICS_ADDR", "metrics-addr", "127.0.0.1:9464", "Prometheus `/metrics` (set to nothing to disable)", true, func(c *Config) any { return &c.MetricsAddr }},
	{"PPROF_ADDR", "pprof-addr", "", "Go profiles `/debug/pprof/` (net/http/pprof; off when empty; unauthenticated and costly, so keep it on loopback)", false, func(c *Config) any { return &c.ProfileAddr }},
	{"WORKER_STOP_TIMEOUT", "stop-timeout", workflows.RestartAttemptTimeout.String(), "how long the worker drains on SIGTERM; at least a restart attempt's bound (10 min)", false, func(c *Config) any { return &c.StopTimeout }},
}

// Variables lists every environment variable the worker reads itself.
var Variables = func() []string {
	out := make([]string, len(settings))
	for i, s := range settings {
		out[i] = s.Env
	}
	return out
}()

// set parses v into the field p points to.
func set(p any, v string) error {
	switch p := p.(type) {
	case *string:
		*p = v
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		*p = n
	case *bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*p = b
	case *time.Duration:
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration (like 90s or 10m)", v)
		}
		*p = d
	}
	return nil
}

// Defaults is the configuration with every default.
func Defaults() Config {
	var c Config
	for _, s := range settings {
		_ = set(s.field(&c), s.Default) // the defaults parse: a test says so
	}
	return c
}

// FromEnv reads the configuration from the environment over the defaults;
// a value that does not parse is an error naming the variable.
func FromEnv() (Config, error) {
	c := Defaults()
	for _, s := range settings {
		v, ok := os.LookupEnv(s.Env)
		if !ok || (v == "" && !s.EmptyOff) {
			continue
		}
		if err := set(s.field(&c), v); err != nil {
			return c, fmt.Errorf("%s: %w", s.Env, err)
		}
	}
	return c, nil
}

// value is a flag bound to a Config field.
type value struct{ p any }

func (v value) String() string {
	switch p := v.p.(type) {
	case *string:
		return *p
	case *int:
		return strconv.Itoa(*p)
	case *bool:
		return strconv.FormatBool(*p)
	case *time.Duration:
		return p.String()
	}
	return ""
}

func (v value) Set(s string) error { return set(v.p, s) }

func (v value) IsBoolFlag() bool { _, ok := v.p.(*bool); return ok }

// Flags binds flags that override c (whose values are the defaults shown).
func (c *Config) Flags(fs *flag.FlagSet) {
	for _, s := range settings {
		fs.Var(value{s.field(c)}, s.Flag, s.Meaning+" ("+s.Env+")")
	}
}

// ConfigTable is the README's table of settings.
func ConfigTable() string {
	var b strings.Builder
	b.WriteString("| variable | flag | default | meaning |\n|---|---|---|---|\n")
	for _, s := range settings {
		def := s.Default
		if def != "" {
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `%s` | `--%s` | %s | %s |\n", s.Env, s.Flag, def, s.Meaning)
	}
	return b.String()
}
