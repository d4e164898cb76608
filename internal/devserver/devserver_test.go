package devserver

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

func TestServerAndUIServeAndStateSurvivesARestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Temporal server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()

	s, err := Start(ctx, Options{StateDir: dir, FrontendPort: -1, UIPort: -1})
	require.NoError(t, err)
	c, err := client.Dial(client.Options{HostPort: s.FrontendAddress(), Namespace: Namespace})
	require.NoError(t, err)
	// No worker polls this queue: the run stays open, in the SQLite file.
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "survivor", TaskQueue: "nobody-polls"}, "SomeWorkflow")
	require.NoError(t, err)
	c.Close()

	// The link printed for a run serves the Web UI page.
	resp, err := http.Get(s.WorkflowURL("survivor", run.GetRunID()))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, strings.ToLower(string(body)), "<html")
	s.Stop()

	s2, err := Start(ctx, Options{StateDir: dir, FrontendPort: -1, UIPort: -2})
	require.NoError(t, err)
	defer s2.Stop()
	c2, err := client.Dial(client.Options{HostPort: s2.FrontendAddress(), Namespace: Namespace})
	require.NoError(t, err)
	defer c2.Close()
	desc, err := c2.DescribeWorkflowExecution(ctx, "survivor", run.GetRunID())
	require.NoError(t, err)
	require.Equal(t, "SomeWorkflow", desc.WorkflowExecutionInfo.Type.Name)
	requireTrimmedIndexes(t, s2)
}

// The visibility indexes nothing here uses are gone, in memory as in a
// file, and listing by a custom keyword attribute still works.
func TestUnusedVisibilityIndexesAreDroppedAndListingWorks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Temporal server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{FrontendPort: -1, UIPort: -2,
		SearchAttributes: map[string]enumspb.IndexedValueType{"WorkspaceId": enumspb.INDEXED_VALUE_TYPE_KEYWORD}})
	require.NoError(t, err)
	defer s.Stop()
	requireTrimmedIndexes(t, s)

	c, err := client.Dial(client.Options{HostPort: s.FrontendAddress(), Namespace: Namespace})
	require.NoError(t, err)
	defer c.Close()
	key := temporal.NewSearchAttributeKeyKeyword("WorkspaceId")
	for _, ws := range []string{"ws-1", "ws-2"} {
		_, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "listed-" + ws, TaskQueue: "nobody-polls",
			TypedSearchAttributes: temporal.NewSearchAttributes(key.ValueSet(ws))}, "SomeWorkflow")
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: Namespace, Query: "WorkspaceId = 'ws-2'"})
		return err == nil && len(resp.Executions) == 1 && resp.Executions[0].Execution.WorkflowId == "listed-ws-2"
	}, 30*time.Second, 100*time.Millisecond)
}

func requireTrimmedIndexes(t *testing.T, s *Server) {
	t.Helper()
	have, err := visibilityIndexes(context.Background(), s.dbDSN)
	require.NoError(t, err)
	for _, idx := range unusedVisibilityIndexes {
		require.NotContains(t, have, idx)
	}
	for _, idx := range []string{"default_idx", "by_workflow_id", "by_status", "by_keyword_01"} {
		require.Contains(t, have, idx)
	}
}

func TestBusyPortIsNamed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	busy := ln.Addr().(*net.TCPAddr).Port
	_, err = pickPort(busy, 0)
	require.ErrorContains(t, err, fmt.Sprintf("port %d is busy", busy))

	free, err := pickPort(-1, 0)
	require.NoError(t, err)
	got, err := pickPort(0, free)
	require.NoError(t, err)
	require.Equal(t, free, got, "0 means the default")
}

// visibilityIndexes lists the indexes of the visibility table.
func visibilityIndexes(ctx context.Context, dsn string) ([]string, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'executions_visibility' AND sql IS NOT NULL")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}
