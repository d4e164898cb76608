package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// retryCommand re-runs a workspace's latest reconcile as it stood at its
// end (workflows.RetryInput).
type retryCommand struct {
	workspace    string
	wait, asJSON bool
}

func (c *retryCommand) flags(fs *flag.FlagSet) {
	workspaceFlag(fs, &c.workspace)
	waitFlag(fs, &c.wait)
	jsonFlag(fs, &c.asJSON)
}

func (c *retryCommand) run(ctx context.Context, out io.Writer) error {
	if c.workspace == "" {
		return errors.New("retry: --workspace is required")
	}
	tc, err := dial()
	if err != nil {
		return err
	}
	defer tc.Close()
	in, err := workflows.RetryInput(ctx, tc, c.workspace)
	if err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	run, err := workflows.Start(ctx, tc, in)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "retry of %s started as run %s with %d plugins\n", run.GetID(), run.GetRunID(), len(in.Plugins))
	if !c.wait {
		return nil
	}
	return waitAndPrint(ctx, out, run, c.asJSON)
}
