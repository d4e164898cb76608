// Command starter triggers and inspects reconciles, and administers the
// reconciler's database.
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
	"text/tabwriter"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
	"go.temporal.io/sdk/converter"

	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/migrations"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

const usage = `usage:
  starter reconcile --workspace ID [--plugin name@version ...] [--dry-run] [--wait] [--json]
  starter status    --workspace ID [--json]
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
Without --plugin, reconcile re-declares the plugins tracked for the workspace.
`

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "starter:", err)
		os.Exit(1)
	}
}

type pluginList []workflows.Plugin

func (p *pluginList) String() string { return fmt.Sprint(*p) }

func (p *pluginList) Set(v string) error {
	name, version, ok := strings.Cut(v, "@")
	if !ok || name == "" || version == "" {
		return fmt.Errorf("--plugin %q must be name@version", v)
	}
	*p = append(*p, workflows.Plugin{Name: name, Version: version})
	return nil
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	cmd, args := args[0], args[1:]
	if cmd == "workspace" {
		if len(args) == 0 || args[0] != "add" {
			return errors.New(usage)
		}
		cmd, args = "workspace add", args[1:]
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		workspace  = fs.String("workspace", "", "workspace id")
		dbURL      = fs.String("database-url", os.Getenv("DATABASE_URL"), "Postgres connection string")
		dryRun     = fs.Bool("dry-run", false, "probe only and print the plan")
		wait       = fs.Bool("wait", false, "wait for the result")
		asJSON     = fs.Bool("json", false, "print JSON")
		instance   = fs.String("instance", "", "EC2 instance id")
		region     = fs.String("region", os.Getenv("AWS_REGION"), "AWS region")
		az         = fs.String("az", "", "availability zone")
		osUser     = fs.String("os-user", store.DefaultOSUser, "login user on the box")
		pluginRoot = fs.String("plugin-root", store.DefaultPluginRoot, "plugin root on the box")
		reason     = fs.String("reason", "", "why (terminate)")
		outcome    = fs.String("outcome", "", "list: only reconciles with this outcome")
		query      = fs.String("query", "", "list: a visibility query")
		every      = fs.Duration("every", 0, "schedule: how often the fleet sweep runs")
		sweepIn    workflows.SweepInput
		plugins    pluginList
	)
	fs.Var(&plugins, "plugin", "declared plugin name@version (repeatable)")
	fs.IntVar(&sweepIn.MaxConcurrency, "max-concurrency", 20, "sweep: reconciles in flight at once")
	fs.IntVar(&sweepIn.MaxErrors, "max-errors", 5, "sweep: failed reconciles tolerated before it stops starting new ones")
	fs.IntVar(&sweepIn.MaxRestartsInFlight, "max-restarts", 5, "sweep: box restarts at once, fleet-wide")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s: %w\n%s", cmd, err, usage)
	}

	switch cmd {
	case "migrate":
		if *dbURL == "" {
			return errors.New("migrate: DATABASE_URL or --database-url is required")
		}
		v, err := migrations.Apply(ctx, *dbURL)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "database schema at version %d\n", v)
		return nil

	case "workspace add":
		if *workspace == "" || *instance == "" || *region == "" {
			return errors.New("workspace add: --workspace, --instance and --region are required")
		}
		st, err := openStore(ctx, *dbURL)
		if err != nil {
			return err
		}
		defer st.Close()
		w := store.Workspace{ID: *workspace, InstanceID: *instance, Region: *region, AvailabilityZone: *az, OSUser: *osUser, PluginRoot: *pluginRoot}
		if err := st.UpsertWorkspace(ctx, w); err != nil {
			return err
		}
		fmt.Fprintf(out, "workspace %s registered on %s (%s, user %s, plugins in %s)\n", w.ID, w.InstanceID, w.Region, w.OSUser, w.PluginRoot)
		return nil

	case "reconcile":
		if *workspace == "" {
			return errors.New("reconcile: --workspace is required")
		}
		if len(plugins) == 0 {
			tracked, err := trackedPlugins(ctx, *dbURL, *workspace)
			if err != nil {
				return err
			}
			plugins = tracked
		}
		c, err := dial()
		if err != nil {
			return err
		}
		defer c.Close()
		run, err := workflows.Start(ctx, c, workflows.ReconcileInput{WorkspaceID: *workspace, Plugins: plugins, DryRun: *dryRun})
		if err != nil {
			return err
		}
		if !*wait && !*dryRun {
			fmt.Fprintf(out, "reconcile started: workflow %s run %s\n", run.GetID(), run.GetRunID())
			return nil
		}
		return waitAndPrint(ctx, out, run, *asJSON)

	case "cancel", "terminate", "retry":
		if *workspace == "" {
			return fmt.Errorf("%s: --workspace is required", cmd)
		}
		if cmd == "terminate" && *reason == "" {
			return errors.New("terminate: --reason is required (it is recorded in the history)")
		}
		c, err := dial()
		if err != nil {
			return err
		}
		defer c.Close()
		id := workflows.ReconcileWorkflowID(*workspace)
		if cmd != "retry" {
			d, err := c.DescribeWorkflowExecution(ctx, id, "")
			if err != nil {
				return fmt.Errorf("%s: %w", cmd, err)
			}
			if st := d.GetWorkflowExecutionInfo().GetStatus(); st != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				return fmt.Errorf("%s: no reconcile running for %s (its latest run is %s)", cmd, *workspace, st)
			}
		}
		switch cmd {
		case "cancel":
			if err := c.CancelWorkflow(ctx, id, ""); err != nil {
				return fmt.Errorf("cancel %s: %w", id, err)
			}
			fmt.Fprintf(out, "cancel requested for %s: no new delivery starts, a restart owed stays pending for the next reconcile\n", id)
			return nil
		case "terminate":
			if err := c.TerminateWorkflow(ctx, id, "", *reason); err != nil {
				return fmt.Errorf("terminate %s: %w", id, err)
			}
			fmt.Fprintf(out, "terminated %s (%s): its plugin children are cancelled; re-run `starter retry --workspace %s` to repair rows and any restart owed\n", id, *reason, *workspace)
			return nil
		}
		in, err := workflows.RetryInput(ctx, c, *workspace)
		if err != nil {
			return fmt.Errorf("retry: %w", err)
		}
		run, err := workflows.Start(ctx, c, in)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "retry of %s started as run %s with %d plugins\n", id, run.GetRunID(), len(in.Plugins))
		if !*wait {
			return nil
		}
		return waitAndPrint(ctx, out, run, *asJSON)

	case "sweep", "schedule":
		if cmd == "schedule" && *every == 0 {
			return errors.New("schedule: --every is required, e.g. --every 6h")
		}
		c, err := dial()
		if err != nil {
			return err
		}
		defer c.Close()
		sweepIn.DryRun = *dryRun
		if cmd == "schedule" {
			created, err := workflows.EnsureSchedule(ctx, c, *every, sweepIn)
			if err != nil {
				return err
			}
			verb := "updated"
			if created {
				verb = "created"
			}
			fmt.Fprintf(out, "schedule %s %s: a fleet sweep every %s (window %d, error budget %d, %d restarts at once); pause or trigger it from the Web UI\n",
				workflows.SweepScheduleID, verb, *every, sweepIn.MaxConcurrency, sweepIn.MaxErrors, sweepIn.MaxRestartsInFlight)
			return nil
		}
		run, err := workflows.StartSweep(ctx, c, sweepIn)
		if err != nil {
			return err
		}
		if !*wait && !*dryRun {
			fmt.Fprintf(out, "sweep running: workflow %s run %s\n", run.GetID(), run.GetRunID())
			return nil
		}
		var rep workflows.SweepReport
		if err := c.GetWorkflow(ctx, run.GetID(), "").Get(ctx, &rep); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(out, rep)
		}
		kind := "sweep"
		if *dryRun {
			kind = "plan"
		}
		fmt.Fprintf(out, "%s: %d workspaces checked, %d plugins missing, %d stale, %d delivered, %d restarts, %d failed, %d skipped (already reconciling)\n",
			kind, rep.Checked, rep.Missing, rep.Stale, rep.Delivered, rep.Restarts, rep.Failures, rep.Skipped)
		for _, f := range rep.Failed {
			fmt.Fprintln(out, "  failed:", f)
		}
		if rep.Stopped {
			fmt.Fprintln(out, "  stopped:", rep.StopReason)
		}
		return nil

	case "list":
		c, err := dial()
		if err != nil {
			return err
		}
		defer c.Close()
		return list(ctx, c, out, listQuery(*workspace, *outcome, *query))

	case "status":
		if *workspace == "" {
			return errors.New("status: --workspace is required")
		}
		return status(ctx, out, *dbURL, *workspace, *asJSON)
	}
	return fmt.Errorf("unknown command %q\n%s", cmd, usage)
}

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

func trackedPlugins(ctx context.Context, dsn, workspace string) ([]workflows.Plugin, error) {
	st, err := openStore(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("reconcile without --plugin re-declares the tracked plugins: %w", err)
	}
	defer st.Close()
	rows, err := st.TrackingRows(ctx, workspace)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("workspace %s has no tracked plugins: declare them with --plugin name@version", workspace)
	}
	out := make([]workflows.Plugin, len(rows))
	for i, r := range rows {
		out[i] = workflows.Plugin{Name: r.PluginName, Version: r.Version}
	}
	return out, nil
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// waitAndPrint waits for a reconcile and prints its result (also when it
// failed: the result names what failed), returning the run's error.
func waitAndPrint(ctx context.Context, out io.Writer, run client.WorkflowRun, asJSON bool) error {
	res, err := workflows.Result(ctx, run)
	if asJSON {
		if jerr := printJSON(out, res); jerr != nil {
			return jerr
		}
		return err
	}
	printResult(out, run, res)
	return err
}

func printResult(out io.Writer, run client.WorkflowRun, res workflows.ReconcileResult) {
	fmt.Fprintf(out, "workspace %s on %s (workflow %s, run %s)\n", res.WorkspaceID, res.InstanceID, run.GetID(), run.GetRunID())
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLUGIN\tVERSION\tACTION\tREASON")
	for _, p := range res.Plugins {
		reason := p.Reason
		if p.Error != "" {
			reason = p.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Version, p.Action, reason)
	}
	_ = tw.Flush()
	fmt.Fprintln(out, res.Summary)
}

func status(ctx context.Context, out io.Writer, dsn, workspace string, asJSON bool) error {
	type report struct {
		Workspace store.Workspace
		Tracking  []store.Tracking
		Restarts  []store.Restart
		Running   *workflows.Status `json:",omitempty"`
		RunError  string            `json:",omitempty"`
	}
	st, err := openStore(ctx, dsn)
	if err != nil {
		return err
	}
	defer st.Close()
	var r report
	if r.Workspace, err = st.Workspace(ctx, workspace); err != nil {
		return err
	}
	if r.Tracking, err = st.TrackingRows(ctx, workspace); err != nil {
		return err
	}
	if r.Restarts, err = st.Restarts(ctx, workspace); err != nil {
		return err
	}
	if c, err := dial(); err == nil {
		defer c.Close()
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if v, err := c.QueryWorkflow(qctx, workflows.ReconcileWorkflowID(workspace), "", workflows.QueryStatus); err == nil {
			var s workflows.Status
			if v.Get(&s) == nil {
				r.Running = &s
			}
		}
	} else {
		r.RunError = err.Error()
	}
	if asJSON {
		return printJSON(out, r)
	}
	w := r.Workspace
	fmt.Fprintf(out, "workspace %s: %s in %s (%s), user %s, plugins in %s\n", w.ID, w.InstanceID, w.Region, w.Status, w.OSUser, w.PluginRoot)
	if w.RestartPendingSince != nil {
		fmt.Fprintf(out, "restart pending since %s\n", w.RestartPendingSince.Format(time.RFC3339))
	} else {
		fmt.Fprintln(out, "no restart pending")
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLUGIN\tVERSION\tVIA\tLAST VERIFIED\tDELIVERED")
	for _, t := range r.Tracking {
		delivered := "-"
		if t.DeliveredAt != nil {
			delivered = t.DeliveredAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.PluginName, t.Version, t.InstalledVia, t.LastVerifiedAt.Format(time.RFC3339), delivered)
	}
	_ = tw.Flush()
	for _, x := range r.Restarts {
		done := "not completed"
		if x.CompletedAt != nil {
			done = "completed " + x.CompletedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(out, "restart %s (%s) by %s: %s, %s\n", x.RequestedAt.Format(time.RFC3339), x.Mode, x.WorkflowID, x.Reason, done)
	}
	if r.Running != nil {
		fmt.Fprintf(out, "reconcile running: %s\n", r.Running.Phase)
	}
	return nil
}

// listQuery builds a visibility query over reconciles.
func listQuery(workspace, outcome, extra string) string {
	q := []string{`WorkflowType = "ReconcileWorkspace"`}
	if workspace != "" {
		q = append(q, fmt.Sprintf("%s = %q", workflows.SearchWorkspaceID.GetName(), workspace))
	}
	if outcome != "" {
		q = append(q, fmt.Sprintf("%s = %q", workflows.SearchOutcome.GetName(), outcome))
	}
	if extra != "" {
		q = append(q, "("+extra+")")
	}
	return strings.Join(q, " AND ")
}

func list(ctx context.Context, c client.Client, out io.Writer, query string) error {
	resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: query, PageSize: 100})
	if err != nil {
		return fmt.Errorf("list %q: %w", query, err)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKFLOW\tRUN\tSTATUS\tOUTCOME\tSTARTED")
	for _, e := range resp.GetExecutions() {
		outcome := ""
		if p := e.GetSearchAttributes().GetIndexedFields()[workflows.SearchOutcome.GetName()]; p != nil {
			_ = converter.GetDefaultDataConverter().FromPayload(p, &outcome)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.GetExecution().GetWorkflowId(), e.GetExecution().GetRunId(),
			e.GetStatus(), outcome, e.GetStartTime().AsTime().Format(time.RFC3339))
	}
	_ = tw.Flush()
	fmt.Fprintf(out, "%d reconciles match %s\n", len(resp.GetExecutions()), query)
	return nil
}
