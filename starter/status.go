package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// statusCommand shows a workspace: its box, tracking rows, pending
// restart, restart ledger and the live state of a running reconcile.
type statusCommand struct {
	workspace, databaseURL string
	asJSON                 bool
}

func (c *statusCommand) flags(fs *flag.FlagSet) {
	workspaceFlag(fs, &c.workspace)
	databaseFlag(fs, &c.databaseURL)
	jsonFlag(fs, &c.asJSON)
}

func (c *statusCommand) run(ctx context.Context, out io.Writer) error {
	if c.workspace == "" {
		return errors.New("status: --workspace is required")
	}
	return status(ctx, out, c.databaseURL, c.workspace, c.asJSON)
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
