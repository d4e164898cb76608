package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// terminateCommand hard-stops a workspace's running reconcile, recording
// why in its history; its plugin children are cancelled.
type terminateCommand struct{ workspace, reason string }

func (c *terminateCommand) flags(fs *flag.FlagSet) {
	workspaceFlag(fs, &c.workspace)
	fs.StringVar(&c.reason, "reason", "", "why (recorded in the history)")
}

func (c *terminateCommand) run(ctx context.Context, out io.Writer) error {
	switch {
	case c.workspace == "":
		return errors.New("terminate: --workspace is required")
	case c.reason == "":
		return errors.New("terminate: --reason is required (it is recorded in the history)")
	}
	tc, err := dial()
	if err != nil {
		return err
	}
	defer tc.Close()
	id := workflows.ReconcileWorkflowID(c.workspace)
	if err := requireRunning(ctx, tc, "terminate", c.workspace, id); err != nil {
		return err
	}
	if err := tc.TerminateWorkflow(ctx, id, "", c.reason); err != nil {
		return fmt.Errorf("terminate %s: %w", id, err)
	}
	fmt.Fprintf(out, "terminated %s (%s): its plugin children are cancelled; re-run `starter retry --workspace %s` to repair rows and any restart owed\n", id, c.reason, c.workspace)
	return nil
}
