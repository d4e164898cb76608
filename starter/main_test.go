package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service/servicetest"
	"github.com/plugin-reconciler/plugin-reconciler/migrations"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

func TestMain(m *testing.M) { pgcluster.TestMain(m) }

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), args, &out)
	return out.String(), err
}

func TestArgumentErrorsNameWhatIsWrong(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "usage:"},
		{[]string{"reconcile"}, "--workspace is required"},
		{[]string{"reconcile", "--workspace", "ws", "--plugin", "gh"}, `--plugin "gh" must be name@version`},
		{[]string{"workspace", "add", "--workspace", "ws"}, "--instance and --region are required"},
		{[]string{"terminate", "--workspace", "ws"}, "--reason is required"},
		{[]string{"migrate", "--database-url", ""}, "DATABASE_URL"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"schedule"}, "--every is required"},
		// Each command takes only its own flags.
		{[]string{"status", "--workspace", "ws", "--every", "6h"}, "flag provided but not defined: -every"},
		{[]string{"migrate", "--plugin", "a@1"}, "flag provided but not defined: -plugin"},
		{[]string{"cancel", "--workspace", "ws", "--reason", "x"}, "flag provided but not defined: -reason"},
		{[]string{"list", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		_, err := runCmd(t, tt.args...)
		require.ErrorContains(t, err, tt.want, tt.args)
	}
}

func TestOperatorCommandsOnTheRealStack(t *testing.T) {
	s := servicetest.New(t)
	t.Setenv("TEMPORAL_ADDRESS", s.Frontend)
	t.Setenv("TEMPORAL_NAMESPACE", s.Namespace)
	db := "--database-url=" + s.DSN

	out, err := runCmd(t, "migrate", db)
	require.NoError(t, err)
	require.Contains(t, out, fmt.Sprintf("schema at version %d", migrations.Latest()))

	box := s.BootBox(servicetest.All("code-review"))
	out, err = runCmd(t, "workspace", "add", db, "--workspace", "ws-cli", "--instance", box.InstanceID,
		"--region", "us-east-1", "--os-user", s.Fleet.User(), "--plugin-root", box.PluginRoot)
	require.NoError(t, err)
	require.Contains(t, out, "workspace ws-cli registered on "+box.InstanceID)

	args := []string{"--workspace", "ws-cli"}
	for _, p := range servicetest.Declared {
		args = append(args, "--plugin", p.String())
	}
	out, err = runCmd(t, append([]string{"reconcile", "--dry-run"}, args...)...)
	require.NoError(t, err)
	require.Contains(t, out, "plan: 4 to record, 1 to deliver, restart yes")
	require.Contains(t, out, "code-review")
	require.Equal(t, 0, box.Restarts())

	out, err = runCmd(t, append([]string{"reconcile", "--wait", "--json"}, args...)...)
	require.NoError(t, err)
	var res workflows.ReconcileResult
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, 1, res.Count(workflows.ActionDelivered))
	require.Equal(t, 1, box.Restarts())

	out, err = runCmd(t, "status", db, "--workspace", "ws-cli")
	require.NoError(t, err)
	require.Contains(t, out, "declaration: generation 1 (declared ")
	require.Contains(t, out, "observed generation 1: reconciled in full")
	require.Regexp(t, `code-review\s+2\.0\.0\s+2\.0\.0\s+2\.0\.0\s+would-record`, out, "declared, on the box, tracked")
	require.Contains(t, out, "no restart pending")
	require.Contains(t, out, "code-review")
	require.Regexp(t, `code-review\s+2\.0\.0\s+reconcile`, out)
	require.Contains(t, out, "1 plugin(s) delivered")

	require.Eventually(t, func() bool {
		out, err = runCmd(t, "list", "--workspace", "ws-cli", "--outcome", "restarted")
		return err == nil && strings.Contains(out, "1 reconciles match")
	}, 20e9, 2e8)

	// Retry re-runs the last input: everything is in place now.
	out, err = runCmd(t, "retry", "--workspace", "ws-cli", "--wait")
	require.NoError(t, err)
	require.Contains(t, out, "5 recorded, 0 delivered")
	require.Equal(t, 1, box.Restarts())

	// Reconcile without --plugin converges to the stored declaration.
	out, err = runCmd(t, "reconcile", db, "--workspace", "ws-cli", "--wait")
	require.NoError(t, err)
	require.Contains(t, out, "5 recorded, 0 delivered")

	// --prune without the set is refused before anything starts.
	_, err = runCmd(t, "reconcile", db, "--workspace", "ws-cli", "--prune")
	require.ErrorContains(t, err, "--prune needs the whole declared set")
	// With it, what is left out is removed: the plan shows it first.
	prune := []string{"reconcile", "--workspace", "ws-cli", "--prune"}
	for _, p := range servicetest.Declared[1:] {
		prune = append(prune, "--plugin", p.String())
	}
	out, err = runCmd(t, append(prune, "--dry-run")...)
	require.NoError(t, err)
	require.Regexp(t, servicetest.Declared[0].Name+`\s+\S+\s+would-remove`, out)
	out, err = runCmd(t, append(prune, "--wait")...)
	require.NoError(t, err)
	require.Contains(t, out, "1 removed")
	require.Equal(t, 2, box.Restarts(), "the removal's one restart")
	out, err = runCmd(t, "status", db, "--workspace", "ws-cli")
	require.NoError(t, err)
	require.Contains(t, out, "generation 2")
	require.NotRegexp(t, `(?m)^`+servicetest.Declared[0].Name+`\s`, out, "neither declared, on the box nor tracked")

	// The fleet plan changes nothing.
	out, err = runCmd(t, "sweep", "--dry-run")
	require.NoError(t, err)
	require.Contains(t, out, "plan: 1 workspaces checked, 0 plugins missing, 0 stale, 0 delivered, 0 removed, 0 restarts, 0 failed")
	out, err = runCmd(t, "schedule", "--every", "6h")
	require.NoError(t, err)
	require.Contains(t, out, "created")
	out, err = runCmd(t, "schedule", "--every", "3h")
	require.NoError(t, err)
	require.Contains(t, out, "updated")

	_, err = runCmd(t, "cancel", "--workspace", "ws-cli")
	require.ErrorContains(t, err, "no reconcile running for ws-cli")
	_, err = runCmd(t, "terminate", "--workspace", "ws-cli", "--reason", "test")
	require.ErrorContains(t, err, "no reconcile running for ws-cli")
}

// A retry re-runs what the terminated run was asked for in the end: its
// start input with the declarations signalled to it folded in, not the
// start input alone (which would downgrade an upgrade that came by signal).
func TestRetryAfterASignalFoldedUpgrade(t *testing.T) {
	s := servicetest.New(t)
	t.Setenv("TEMPORAL_ADDRESS", s.Frontend)
	t.Setenv("TEMPORAL_NAMESPACE", s.Namespace)
	box := s.Box("ws-retry-fold", servicetest.All())
	box.SetLatency(300 * time.Millisecond) // keeps the first run busy
	run, err := workflows.Start(context.Background(), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-retry-fold", Plugins: servicetest.Declared})
	require.NoError(t, err)
	upgrade := append([]workflows.Plugin(nil), servicetest.Declared...)
	upgrade[0].Version = "1.3.0" // github-tools, by a later trigger
	again, err := workflows.Start(context.Background(), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-retry-fold", Plugins: upgrade})
	require.NoError(t, err)
	require.Equal(t, run.GetRunID(), again.GetRunID(), "folded into the running reconcile")
	_, err = runCmd(t, "terminate", "--workspace", "ws-retry-fold", "--reason", "operator test")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		d, err := s.Client.DescribeWorkflowExecution(context.Background(), workflows.PluginWorkflowID(run.GetID(), "github-tools"), "")
		return err != nil || d.GetWorkflowExecutionInfo().GetCloseTime() != nil
	}, time.Minute, 100*time.Millisecond, "the terminated run's children closed")
	box.SetLatency(0)

	out, err := runCmd(t, "retry", "--workspace", "ws-retry-fold", "--wait", "--json")
	require.NoError(t, err, out)
	var res workflows.ReconcileResult
	require.NoError(t, json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res))
	versions := map[string]string{}
	for _, p := range res.Plugins {
		versions[p.Name] = p.Version
	}
	require.Equal(t, "1.3.0", versions["github-tools"], "the retry kept the upgrade")
	data, err := os.ReadFile(box.ManifestPath("github-tools"))
	require.NoError(t, err)
	require.Contains(t, string(data), "version: 1.3.0")
	require.Equal(t, 1, box.Restarts())
}
