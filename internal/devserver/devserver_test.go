package devserver

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
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
