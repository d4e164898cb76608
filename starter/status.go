package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// statusCommand shows a workspace: its box, its declaration against what
// is on the box and what is tracked, its pending restart, restart ledger
// and the live state of a running reconcile.
type statusCommand struct {
	workspace, databaseURL string
	probe, asJSON          bool
}

func (c *statusCommand) flags(fs *flag.FlagSet) {
	workspaceFlag(fs, &c.workspace)
	databaseFlag(fs, &c.databaseURL)
	fs.BoolVar(&c.probe, "probe", true, "probe the box (a plan run by the workers) to show what is on it")
	jsonFlag(fs, &c.asJSON)
}

func (c *statusCommand) run(ctx context.Context, out io.Writer) error {
	if c.workspace == "" {
		return errors.New("status: --workspace is required")
	}
	r, err := readStatus(ctx, c.databaseURL, c.workspace, c.probe)
	if err != nil {
		return err
	}
	if c.asJSON {
		return printJSON(out, r)
	}
	r.print(out)
	return nil
}

// statusReport is what status shows.
type statusReport struct {
	Workspace   store.Workspace
	Declaration *store.Declaration `json:",omitempty"`
	Plugins     []pluginStatus
	Tracking    []store.Tracking
	Restarts    []store.Restart
	// Probed: the plan that read the box, or why there is none.
	Probed     *workflows.ReconcileResult `json:",omitempty"`
	ProbeError string                     `json:",omitempty"`
	Running    *workflows.Status          `json:",omitempty"`
	RunError   string                     `json:",omitempty"`
}

// pluginStatus is one plugin declared, on the box or tracked.
type pluginStatus struct {
	Name     string
	Declared string `json:",omitempty"`
	OnBox    string `json:",omitempty"` // "?" when not probed
	Tracked  string `json:",omitempty"`
	// Plan is what a reconcile would do: would-record (in sync),
	// would-deliver, would-remove.
	Plan   string `json:",omitempty"`
	Reason string `json:",omitempty"`
}

// probeTimeout bounds the plan that reads the box for status.
const probeTimeout = time.Minute

func readStatus(ctx context.Context, dsn, workspace string, probe bool) (statusReport, error) {
	var r statusReport
	st, err := openStore(ctx, dsn)
	if err != nil {
		return r, err
	}
	defer st.Close()
	if r.Workspace, err = st.Workspace(ctx, workspace); err != nil {
		return r, err
	}
	switch d, err := st.Declaration(ctx, workspace); {
	case err == nil:
		r.Declaration = &d
	case !errors.Is(err, store.ErrNotFound):
		return r, err
	}
	if r.Tracking, err = st.TrackingRows(ctx, workspace); err != nil {
		return r, err
	}
	if r.Restarts, err = st.Restarts(ctx, workspace); err != nil {
		return r, err
	}
	c, err := dial()
	if err != nil {
		r.RunError = err.Error()
		r.ProbeError = "not probed: " + err.Error()
		r.Plugins = r.join()
		return r, nil
	}
	defer c.Close()
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if v, err := c.QueryWorkflow(qctx, workflows.ReconcileWorkflowID(workspace), "", workflows.QueryStatus); err == nil {
		var s workflows.Status
		if v.Get(&s) == nil {
			r.Running = &s
		}
	}
	switch {
	case !probe:
		r.ProbeError = "not probed (--probe=false)"
	case r.Declaration == nil:
		r.ProbeError = "not probed: no declaration"
	default:
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		run, err := workflows.Start(pctx, c, workflows.ReconcileInput{WorkspaceID: workspace, Plugins: r.Declaration.Plugins, Converge: true, DryRun: true})
		if err == nil {
			var res workflows.ReconcileResult
			if res, err = workflows.Result(pctx, run); err == nil || len(res.Plugins) > 0 {
				r.Probed = &res
			}
		}
		if err != nil {
			r.ProbeError = "probe: " + err.Error()
		}
	}
	r.Plugins = r.join()
	return r, nil
}

// join lines up, per plugin, the declared version, the box's and the
// tracked one.
func (r statusReport) join() []pluginStatus {
	var out []pluginStatus
	at := func(name string) *pluginStatus {
		i := slices.IndexFunc(out, func(p pluginStatus) bool { return p.Name == name })
		if i < 0 {
			out = append(out, pluginStatus{Name: name, OnBox: "?"})
			i = len(out) - 1
		}
		return &out[i]
	}
	if r.Declaration != nil {
		for _, p := range r.Declaration.Plugins {
			at(p.Name).Declared = p.Version
		}
	}
	for _, t := range r.Tracking {
		at(t.PluginName).Tracked = t.Version
	}
	if r.Probed != nil {
		for _, p := range r.Probed.Plugins {
			s := at(p.Name)
			s.Plan, s.Reason = string(p.Action), p.Reason
			if p.Error != "" {
				s.Reason = p.Error
			}
			if p.Action != workflows.ActionWouldRemove {
				s.OnBox = p.BoxVersion
			}
		}
	}
	slices.SortFunc(out, func(a, b pluginStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (r statusReport) print(out io.Writer) {
	w := r.Workspace
	fmt.Fprintf(out, "workspace %s: %s in %s (%s), user %s, plugins in %s\n", w.ID, w.InstanceID, w.Region, w.Status, w.OSUser, w.PluginRoot)
	if d := r.Declaration; d != nil {
		state := "reconciled in full"
		if d.Behind() {
			state = "behind its declaration"
		}
		fmt.Fprintf(out, "declaration: generation %d (declared %s by %s), observed generation %d: %s\n",
			d.Generation, d.DeclaredAt.Format(time.RFC3339), d.DeclaredByWorkflowID, d.ObservedGeneration, state)
	} else {
		fmt.Fprintln(out, "declaration: none")
	}
	if w.RestartPendingSince != nil {
		fmt.Fprintf(out, "restart pending since %s\n", w.RestartPendingSince.Format(time.RFC3339))
	} else {
		fmt.Fprintln(out, "no restart pending")
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLUGIN\tDECLARED\tON BOX\tTRACKED\tPLAN\tREASON")
	for _, p := range r.Plugins {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, dash(p.Declared), dash(p.OnBox), dash(p.Tracked), dash(p.Plan), p.Reason)
	}
	_ = tw.Flush()
	if r.ProbeError != "" {
		fmt.Fprintf(out, "on box: %s\n", r.ProbeError)
	} else if r.Probed != nil {
		fmt.Fprintf(out, "on box: %s\n", r.Probed.Summary)
	}
	fmt.Fprintln(tw, "TRACKED\tVERSION\tVIA\tLAST VERIFIED\tDELIVERED")
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
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
