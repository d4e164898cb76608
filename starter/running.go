package main

import (
	"context"
	"fmt"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
)

// requireRunning fails, naming the command, unless the workflow's latest
// run is running.
func requireRunning(ctx context.Context, c client.Client, cmd, workspace, id string) error {
	d, err := c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if st := d.GetWorkflowExecutionInfo().GetStatus(); st != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		return fmt.Errorf("%s: no reconcile running for %s (its latest run is %s)", cmd, workspace, st)
	}
	return nil
}
