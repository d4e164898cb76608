package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// listCommand lists reconciles with a visibility query.
type listCommand struct{ workspace, outcome, query string }

func (c *listCommand) flags(fs *flag.FlagSet) {
	workspaceFlag(fs, &c.workspace)
	fs.StringVar(&c.outcome, "outcome", "", "only reconciles with this outcome")
	fs.StringVar(&c.query, "query", "", "a visibility query")
}

func (c *listCommand) run(ctx context.Context, out io.Writer) error {
	tc, err := dial()
	if err != nil {
		return err
	}
	defer tc.Close()
	return list(ctx, tc, out, listQuery(c.workspace, c.outcome, c.query))
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
