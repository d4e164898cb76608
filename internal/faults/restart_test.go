package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/plugin-reconciler/plugin-reconciler/internal/devserver"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// A reboot takes a while to begin: the box answers with its old boot id
// for 30 s after RebootInstances. The worker that sent it dies at once; the
// retry, on a new worker, must wait for that reboot, not send another.
func TestRebootAttemptKilledAfterRebootInstances(t *testing.T) {
	h := newHarness(t)
	h.killWorker()
	h.startWorker("RESTART_MODE=reboot")
	b := h.box("reboot-kill", all("code-review"))
	b.SetRebootDelay(30 * time.Second)
	h.start("reboot-kill", declared)
	require.Eventually(t, func() bool { return h.aws.Calls("RebootInstances") >= 1 }, 2*time.Minute, 2*time.Millisecond)
	h.killWorker()
	killed := time.Now()
	h.startWorker("RESTART_MODE=reboot")
	_, err := h.wait("reboot-kill", 4*time.Minute)
	require.NoError(t, err)
	h.checkBox("reboot-kill", b, declared, 1)
	require.Equal(t, 1, h.aws.Calls("RebootInstances"), "the retry waited for the reboot it found issued")
	events, err := b.Events()
	require.NoError(t, err)
	require.NoError(t, fleettest.CheckRestarts(events))
	record("reboot mode: worker SIGKILLed right after RebootInstances (the box goes down 30 s later)",
		fmt.Sprintf("the retry found the reboot issued and waited for it; run completed %s after the kill", time.Since(killed).Round(time.Second)),
		"one RebootInstances call, one reboot; rows exact; nothing pending")
}

// A deploy (SIGTERM) while a slow restart runs: the worker drains, the
// restart finishes once, and a new worker carries on.
func TestSIGTERMDuringASlowRestart(t *testing.T) {
	h := newHarness(t)
	b := h.box("deploy-restart", all("slack-notify"))
	require.NoError(t, b.SetRestartDelay(30*time.Second))
	h.start("deploy-restart", declared)
	require.Eventually(t, b.Restarting, 2*time.Minute, 2*time.Millisecond)
	old := h.stopWorker()
	h.startWorker()
	select {
	case <-old:
	case <-time.After(2 * time.Minute):
		t.Fatal("the old worker did not exit")
	}
	_, err := h.wait("deploy-restart", 3*time.Minute)
	require.NoError(t, err)
	h.checkBox("deploy-restart", b, declared, 1)
	events, err := b.Events()
	require.NoError(t, err)
	require.NoError(t, fleettest.CheckRestarts(events))
	record("deploy: worker SIGTERMed during a 30 s restart, a new worker started at once",
		"the old worker finished the restart before exiting; the run completed",
		"one restart; rows exact; nothing pending")
}

// An install that fails before its swap changed nothing on the box: no
// restart is owed for it.
func TestInstallFailedBeforeItsSwapOwesNoRestart(t *testing.T) {
	h := newHarness(t)
	b := h.box("no-swap", all("mcp-postgres"))
	// The plugin's install lock cannot be opened: every install attempt
	// fails before it touches the plugin's directory.
	require.NoError(t, os.Mkdir(filepath.Join(b.PluginRoot, ".lock+mcp-postgres"), 0o755))
	h.start("no-swap", declared)
	res, err := h.wait("no-swap", 5*time.Minute)
	require.ErrorContains(t, err, "mcp-postgres")
	require.Equal(t, []string{"mcp-postgres"}, res.Failed)
	require.Equal(t, 0, b.Restarts(), "nothing was swapped, so nothing restarted")
	events, err := b.Events()
	require.NoError(t, err)
	require.Empty(t, events)
	record("install fails before its swap (the plugin's lock cannot be opened)",
		"delivery retried and failed: "+firstLine(res.Plugins[1].Error),
		"no restart: the box records no swap; the plugin reported failed by name")
}

// In endpoint mode a failing tunnel dial must not carry the presigned URL
// (credential, session token, signature) into activity failures, the
// workflow's history or the worker's log.
func TestEndpointDialFailureLeaksNothing(t *testing.T) {
	h := newHarness(t)
	h.killWorker()
	h.startWorker("EIC_MODE=endpoint", "EIC_ENDPOINT_ID=eice-0123456789abcdef0", "EIC_ENDPOINT_URL=ws://127.0.0.1:1")
	h.box("tunnel", all())
	run := h.start("tunnel", declared)
	var failure string
	require.Eventually(t, func() bool {
		resp, err := h.client.ListWorkflow(ctx(t), &workflowservice.ListWorkflowExecutionsRequest{
			Namespace: devserver.Namespace, Query: `WorkflowType = "ReconcilePlugin" AND ExecutionStatus = "Running"`,
		})
		if err != nil {
			return false
		}
		for _, e := range resp.GetExecutions() {
			d, err := h.client.DescribeWorkflowExecution(ctx(t), e.GetExecution().GetWorkflowId(), "")
			if err != nil {
				continue
			}
			for _, a := range d.GetPendingActivities() {
				if f := a.GetLastFailure(); f != nil {
					failure = f.String()
					return true
				}
			}
		}
		return false
	}, 2*time.Minute, 200*time.Millisecond)
	require.NoError(t, h.client.TerminateWorkflow(ctx(t), run.GetID(), "", "test done"))
	logs, err := os.ReadFile(h.logPath)
	require.NoError(t, err)
	require.Contains(t, failure, "open tunnel to")
	for _, where := range []struct{ name, text string }{{"activity failure", failure}, {"worker log", string(logs)}} {
		for _, secret := range []string{"X-Amz-", "Signature=", "Credential="} {
			require.NotContains(t, where.text, secret, where.name)
		}
	}
	record("endpoint mode: tunnel dial refused", "activity failed and is retried: "+firstLine(strings.TrimSpace(failure)),
		"no X-Amz- parameter, signature or credential in the failure, the history or the worker log")
}

// A worker SIGKILLed while a Prune declaration's removals run (the first
// is off the box, the others not yet): the retried removals finish, the
// plugin already removed is a no-op, and one restart follows them all.
func TestWorkerKilledMidRemoval(t *testing.T) {
	h := newHarness(t)
	const ws = "kill-removal"
	b := h.box(ws, all())
	h.start(ws, declared)
	_, err := h.wait(ws, 3*time.Minute)
	require.NoError(t, err)
	require.Zero(t, b.Restarts())

	b.SetLatency(150 * time.Millisecond) // the removals take a while
	keep, dropped := declared[:2], declared[2:]
	_, err = workflows.Start(ctx(t), h.client, workflows.ReconcileInput{WorkspaceID: ws, Plugins: keep, Prune: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		events, err := b.Events()
		return err == nil && slices.ContainsFunc(events, func(e fleet.Event) bool { return e.Kind == fleet.Removal })
	}, 2*time.Minute, 10*time.Millisecond, "no removal began")
	h.killWorker()
	events, err := b.Events()
	require.NoError(t, err)
	removedAtKill := len(events)
	h.startWorker()
	b.SetLatency(0)

	res, err := h.wait(ws, 3*time.Minute)
	require.NoError(t, err)
	require.Equal(t, len(dropped), res.Count(workflows.ActionRemoved))
	h.checkBox(ws, b, keep, 1)
	rows, err := h.store.TrackingRows(ctx(t), ws)
	require.NoError(t, err)
	require.Len(t, rows, len(keep), "the removed plugins' rows are gone")
	for _, p := range dropped {
		require.NoDirExists(t, filepath.Dir(b.ManifestPath(p.Name)), p.Name)
	}
	entries, err := os.ReadDir(b.PluginRoot)
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, strings.HasPrefix(e.Name(), ".removing"), "half removed: %s", e.Name())
	}
	events, err = b.Events()
	require.NoError(t, err)
	require.NoError(t, fleettest.CheckRestarts(events))
	d, err := h.store.Declaration(ctx(t), ws)
	require.NoError(t, err)
	require.False(t, d.Behind(), "the Prune declaration is observed")
	t.Logf("killed with %d of %d removals on the box", removedAtKill, len(dropped))
	record(fmt.Sprintf("worker SIGKILLed mid-removal (a Prune declaration dropping %d plugins)", len(dropped)),
		fmt.Sprintf("killed after %d of %d removals reached the box; the retried removals completed", removedAtKill, len(dropped)),
		"the dropped plugins off the box and out of the rows, nothing left aside; one restart; the declaration observed")
}
