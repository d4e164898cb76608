package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// sweepCommand starts a fleet sweep (or joins the running one).
type sweepCommand struct {
	in                   workflows.SweepInput
	wait, asJSON, dryRun bool
}

// sweepFlags are the flags sweep and schedule share.
func sweepFlags(fs *flag.FlagSet, in *workflows.SweepInput) {
	fs.IntVar(&in.MaxConcurrency, "max-concurrency", 20, "reconciles in flight at once")
	fs.IntVar(&in.MaxErrors, "max-errors", 5, "failed reconciles tolerated before it stops starting new ones")
	fs.IntVar(&in.MaxRestartsInFlight, "max-restarts", 5, "box restarts at once, fleet-wide")
}

func (c *sweepCommand) flags(fs *flag.FlagSet) {
	sweepFlags(fs, &c.in)
	fs.BoolVar(&c.dryRun, "dry-run", false, "probe only and print the plan")
	waitFlag(fs, &c.wait)
	jsonFlag(fs, &c.asJSON)
}

func (c *sweepCommand) run(ctx context.Context, out io.Writer) error {
	tc, err := dial()
	if err != nil {
		return err
	}
	defer tc.Close()
	c.in.DryRun = c.dryRun
	run, err := workflows.StartSweep(ctx, tc, c.in)
	if err != nil {
		return err
	}
	if !c.wait && !c.dryRun {
		fmt.Fprintf(out, "sweep running: workflow %s run %s\n", run.GetID(), run.GetRunID())
		return nil
	}
	var rep workflows.SweepReport
	if err := tc.GetWorkflow(ctx, run.GetID(), "").Get(ctx, &rep); err != nil {
		return err
	}
	if c.asJSON {
		return printJSON(out, rep)
	}
	kind := "sweep"
	if c.dryRun {
		kind = "plan"
	}
	fmt.Fprintf(out, "%s: %s\n", kind, rep)
	return nil
}
