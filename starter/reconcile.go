package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"go.temporal.io/sdk/client"

	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// reconcileCommand triggers a workspace's reconcile (or joins the running
// one), or runs its plan with --dry-run.
type reconcileCommand struct {
	workspace, databaseURL      string
	plugins                     pluginList
	prune, dryRun, wait, asJSON bool
}

func (c *reconcileCommand) flags(fs *flag.FlagSet) {
	workspaceFlag(fs, &c.workspace)
	databaseFlag(fs, &c.databaseURL)
	fs.Var(&c.plugins, "plugin", "declared plugin name@version (repeatable)")
	fs.BoolVar(&c.prune, "prune", false, "the --plugin flags are the whole declared set: tracked plugins not in it are removed")
	fs.BoolVar(&c.dryRun, "dry-run", false, "probe only and print the plan")
	waitFlag(fs, &c.wait)
	jsonFlag(fs, &c.asJSON)
}

func (c *reconcileCommand) run(ctx context.Context, out io.Writer) error {
	if c.workspace == "" {
		return errors.New("reconcile: --workspace is required")
	}
	in := workflows.ReconcileInput{WorkspaceID: c.workspace, Plugins: c.plugins, Prune: c.prune, DryRun: c.dryRun}
	if len(in.Plugins) == 0 {
		if c.prune {
			return errors.New("reconcile: --prune needs the whole declared set as --plugin flags (it would remove every plugin)")
		}
		// Without --plugin: converge to the stored declaration.
		declared, err := declaredPlugins(ctx, c.databaseURL, c.workspace)
		if err != nil {
			return err
		}
		in.Plugins, in.Converge = declared, true
	}
	tc, err := dial()
	if err != nil {
		return err
	}
	defer tc.Close()
	run, err := workflows.Start(ctx, tc, in)
	if err != nil {
		return err
	}
	if !c.wait && !c.dryRun {
		fmt.Fprintf(out, "reconcile started: workflow %s run %s\n", run.GetID(), run.GetRunID())
		return nil
	}
	return waitAndPrint(ctx, out, run, c.asJSON)
}

// pluginList is the repeatable --plugin name@version flag.
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

// declaredPlugins is the workspace's stored declaration (for a workspace
// tracked before declarations were kept: its tracking rows).
func declaredPlugins(ctx context.Context, dsn, workspace string) ([]workflows.Plugin, error) {
	st, err := openStore(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("reconcile without --plugin converges to the stored declaration: %w", err)
	}
	defer st.Close()
	d, err := st.Declaration(ctx, workspace)
	if err == nil {
		return d.Plugins, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	rows, err := st.TrackingRows(ctx, workspace)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("workspace %s has no declaration: declare its plugins with --plugin name@version", workspace)
	}
	out := make([]workflows.Plugin, len(rows))
	for i, r := range rows {
		out[i] = workflows.Plugin{Name: r.PluginName, Version: r.Version}
	}
	return out, nil
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
