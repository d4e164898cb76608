package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// cancelCommand cancels a workspace's running reconcile: no new delivery
// starts, and a restart owed stays owed for the next reconcile.
type cancelCommand struct{ workspace string }

func (c *cancelCommand) flags(fs *flag.FlagSet) { workspaceFlag(fs, &c.workspace) }

func (c *cancelCommand) run(ctx context.Context, out io.Writer) error {
	if c.workspace == "" {
		return errors.New("cancel: --workspace is required")
	}
	tc, err := dial()
	if err != nil {
		return err
	}
	defer tc.Close()
	id := workflows.ReconcileWorkflowID(c.workspace)
	if err := requireRunning(ctx, tc, "cancel", c.workspace, id); err != nil {
		return err
	}
	if err := tc.CancelWorkflow(ctx, id, ""); err != nil {
		return fmt.Errorf("cancel %s: %w", id, err)
	}
	fmt.Fprintf(out, "cancel requested for %s: no new delivery starts, a restart owed stays pending for the next reconcile\n", id)
	return nil
}
