// Command starter triggers and inspects reconciles, and administers the
// reconciler's database. Each command is a type in a file of its own, with
// its own flags; a flag a command does not take is an error.
//
//	starter reconcile --workspace ID [--plugin name@version …] [--dry-run] [--wait] [--json]
//	starter status    --workspace ID [--json]
//	starter workspace add --workspace ID --instance i-… --region R [--az AZ] [--os-user U] [--plugin-root P]
//	starter cancel    --workspace ID
//	starter terminate --workspace ID --reason TEXT
//	starter retry     --workspace ID [--wait] [--json]
//	starter list      [--workspace ID] [--outcome O] [--query Q]
//	starter sweep     [--dry-run] [--wait] [--json] [--max-concurrency N] [--max-errors N] [--max-restarts N]
//	starter schedule  --every 6h [--max-concurrency N] [--max-errors N] [--max-restarts N]
//	starter migrate
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"

	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
)

const usage = `usage:
  starter reconcile --workspace ID [--plugin name@version ... [--prune]] [--dry-run] [--wait] [--json]
  starter status    --workspace ID [--probe=false] [--json]
  starter workspace add --workspace ID --instance i-... --region REGION [--az AZ] [--os-user USER] [--plugin-root PATH]
  starter cancel    --workspace ID
  starter terminate --workspace ID --reason TEXT
  starter retry     --workspace ID [--wait] [--json]
  starter list      [--workspace ID] [--outcome OUTCOME] [--query VISIBILITY-QUERY]
  starter sweep     [--dry-run] [--wait] [--json] [--max-concurrency N] [--max-errors N] [--max-restarts N]
  starter schedule  --every 6h [--max-concurrency N] [--max-errors N] [--max-restarts N]
  starter migrate

Temporal is configured by TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, ... (the SDK's
environment configuration); the database by DATABASE_URL or --database-url.
Without --plugin, reconcile converges the workspace to its stored declaration;
with --plugin it declares those plugins (added to the stored set, or with
--prune as the whole set: tracked plugins not in it are removed).
`

// command is one starter command: it declares its own flags, then runs.
type command interface {
	flags(fs *flag.FlagSet)
	run(ctx context.Context, out io.Writer) error
}

// commands are the starter's commands by name.
var commands = map[string]func() command{
	"reconcile":     func() command { return &reconcileCommand{} },
	"status":        func() command { return &statusCommand{} },
	"workspace add": func() command { return &workspaceAddCommand{} },
	"cancel":        func() command { return &cancelCommand{} },
	"terminate":     func() command { return &terminateCommand{} },
	"retry":         func() command { return &retryCommand{} },
	"list":          func() command { return &listCommand{} },
	"sweep":         func() command { return &sweepCommand{} },
	"schedule":      func() command { return &scheduleCommand{} },
	"migrate":       func() command { return &migrateCommand{} },
}

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "starter:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New(strings.TrimSpace(usage))
	}
	name, args := args[0], args[1:]
	if name == "workspace" {
		if len(args) == 0 || args[0] != "add" {
			return errors.New(strings.TrimSpace(usage))
		}
		name, args = "workspace add", args[1:]
	}
	newCommand, ok := commands[name]
	if !ok {
		return fmt.Errorf("unknown command %q\n%s", name, usage)
	}
	cmd := newCommand()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cmd.flags(fs)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s: %w\n%s", name, err, usage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q\n%s", name, fs.Arg(0), usage)
	}
	return cmd.run(ctx, out)
}

// Flags more than one command takes.

func workspaceFlag(fs *flag.FlagSet, v *string) { fs.StringVar(v, "workspace", "", "workspace id") }

func databaseFlag(fs *flag.FlagSet, v *string) {
	fs.StringVar(v, "database-url", os.Getenv("DATABASE_URL"), "Postgres connection string (DATABASE_URL)")
}

func jsonFlag(fs *flag.FlagSet, v *bool) { fs.BoolVar(v, "json", false, "print JSON") }

func waitFlag(fs *flag.FlagSet, v *bool) { fs.BoolVar(v, "wait", false, "wait for the result") }

func dial() (client.Client, error) {
	opts, err := envconfig.LoadDefaultClientOptions()
	if err != nil {
		return nil, fmt.Errorf("temporal client configuration: %w", err)
	}
	c, err := client.Dial(opts)
	if err != nil {
		return nil, fmt.Errorf("connect to temporal: %w", err)
	}
	return c, nil
}

func openStore(ctx context.Context, dsn string) (*store.Store, error) {
	if dsn == "" {
		return nil, errors.New("DATABASE_URL or --database-url is required")
	}
	return store.Open(ctx, dsn)
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
