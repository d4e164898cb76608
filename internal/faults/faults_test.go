// Package faults is the fault suite: it breaks the real stack (worker
// crashes, Postgres and box outages, a Temporal restart, AWS faults, bad
// input) and checks that nothing is lost, nothing is half-written, and no
// box restarts twice for one change. `make test` runs it with a few
// worker-crash trials; `make test-faults` runs 20 and writes
// docs/faults.md from what it saw.
package faults

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle/bundletest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

type expect struct {
	ws       string
	box      *fleet.Box
	restarts int
}

func TestWorkerCrashes(t *testing.T) {
	h := newHarness(t)
	var done []expect
	for trial := 1; trial <= trials(); trial++ {
		rng := rand.New(rand.NewPCG(uint64(trial), 42))
		killAt := time.Duration(100+rng.IntN(2400)) * time.Millisecond
		ws := func(s string) string { return fmt.Sprintf("crash%02d-%s", trial, s) }
		cases := []expect{
			{ws("present"), h.box(ws("present"), all()), 0},
			{ws("missing"), h.box(ws("missing"), all("mcp-postgres", "slack-notify")), 1},
			{ws("stale"), h.box(ws("stale"), map[string]string{"github-tools": "1.1.0", "mcp-postgres": "0.4.1", "code-review": "2.0.0", "slack-notify": "1.0.3"}), 1},
			{ws("slow"), h.box(ws("slow"), all("code-review")), 1},
		}
		require.NoError(t, cases[3].box.SetRestartDelay(time.Second))
		for _, c := range cases {
			h.start(c.ws, declared)
		}
		time.Sleep(killAt)
		h.killWorker()
		time.Sleep(300 * time.Millisecond)
		h.startWorker()
		delivered, restarts := 0, 0
		for _, c := range cases {
			res, err := h.wait(c.ws, 5*time.Minute)
			require.NoError(t, err, c.ws)
			delivered += res.Count(workflows.ActionDelivered)
			restarts += c.box.Restarts()
			h.checkBox(c.ws, c.box, declared, c.restarts)
		}
		done = append(done, cases...)
		for _, c := range done {
			require.Equal(t, c.restarts, c.box.Restarts(), "%s: no other box restarted", c.ws)
		}
		record(fmt.Sprintf("worker SIGKILL, trial %02d (seed %d) at %s", trial, trial, killAt),
			fmt.Sprintf("worker started again; 4 reconciles completed, %d plugins delivered, %d restarts", delivered, restarts),
			"every declared plugin on its box and tracked at its version; boxes needing a restart restarted exactly once, the others never (all earlier trials' boxes too); nothing left pending")
	}
}

// eachMissingOne boots one box per declared plugin, each missing that one
// plugin: each needs one delivery and one restart.
func (h *harness) eachMissingOne(prefix string) []expect {
	var cases []expect
	for i, p := range declared {
		ws := fmt.Sprintf("%s-%d", prefix, i)
		cases = append(cases, expect{ws, h.box(ws, all(p.Name)), 1})
	}
	return cases
}

func TestPostgresOutage(t *testing.T) {
	h := newHarness(t)
	cases := h.eachMissingOne("pg")
	for _, c := range cases {
		h.start(c.ws, declared)
	}
	time.Sleep(300 * time.Millisecond)
	port, dir := h.pg.Port, h.pg.Dir
	h.pg.Stop()
	time.Sleep(20 * time.Second)
	var err error
	h.pg, err = pgcluster.Start(ctx(t), dir, port)
	require.NoError(t, err)
	h.completeAll(cases, 5*time.Minute)
	record("Postgres stopped for 20 s during 4 reconciles", "store calls failed and were retried; all 4 completed after Postgres came back",
		"rows exact for every plugin; each box restarted exactly once; nothing left pending")
}

func TestBoxOutage(t *testing.T) {
	h := newHarness(t)
	cases := h.eachMissingOne("outage")
	down := cases[0].box
	down.StopSSHD()
	stopped := time.Now()
	for _, c := range cases {
		h.start(c.ws, declared)
	}
	h.completeAll(cases[1:], 2*time.Minute)
	othersDone := time.Since(stopped)
	require.Less(t, othersDone, 30*time.Second, "the other boxes were not held up")
	time.Sleep(30*time.Second - othersDone)
	require.NoError(t, down.StartSSHD())
	_, err := h.wait(cases[0].ws, 3*time.Minute)
	require.NoError(t, err)
	h.checkBox(cases[0].ws, down, declared, 1)
	record("one box's sshd down for 30 s", fmt.Sprintf("the other 3 reconciles completed in %s; the box's reconcile retried and completed %s after sshd returned", othersDone.Round(time.Second), (time.Since(stopped)-30*time.Second).Round(time.Second)),
		"others not held up (< 30 s); rows exact; each box restarted exactly once")
}

func TestTemporalRestart(t *testing.T) {
	h := newHarness(t)
	cases := h.eachMissingOne("temporal")
	for _, c := range cases {
		c.box.SetLatency(100 * time.Millisecond)
		h.start(c.ws, declared)
	}
	time.Sleep(time.Second)
	h.restartTemporal(2 * time.Second)
	h.completeAll(cases, 5*time.Minute)
	record("Temporal server restarted mid-run (2 s down, same SQLite file)", "the worker reconnected; all 4 runs continued and completed",
		"rows exact; each box restarted exactly once")
}

func TestAWSFaults(t *testing.T) {
	h := newHarness(t)
	h.aws.SetFaults(fakeaws.Faults{ThrottleSendKeyEvery: 2})
	var cases []expect
	for i := range 3 {
		ws := fmt.Sprintf("throttle-%d", i)
		cases = append(cases, expect{ws, h.box(ws, all(declared[i].Name)), 1})
	}
	for _, c := range cases {
		h.start(c.ws, declared)
	}
	h.completeAll(cases, 3*time.Minute)
	h.aws.SetFaults(fakeaws.Faults{})
	record("half of SendSSHPublicKey calls throttled", fmt.Sprintf("%d calls, throttled ones retried by the SDK; 3 reconciles completed", h.aws.Calls("SendSSHPublicKey")),
		"rows exact; each box restarted exactly once")

	stopped := h.box("stopped", all())
	h.aws.SetState(stopped.InstanceID, "stopped")
	h.start("stopped", declared)
	res, err := h.wait("stopped", 2*time.Minute)
	require.ErrorContains(t, err, "type: PluginsFailed")
	require.Len(t, res.Failed, len(declared))
	for _, p := range res.Plugins {
		require.Contains(t, p.Error, stopped.InstanceID+" is stopped")
	}
	require.Equal(t, 0, stopped.Restarts())
	record("instance stopped", "each plugin failed at once, not retried: "+res.Plugins[0].Error, "the error names the state; no restart; the run failed naming the plugins")

	require.NoError(t, h.store.UpsertWorkspace(ctx(t), storeWorkspace("ghost", "i-0badbadbadbadbad0", h)))
	h.start("ghost", declared)
	res, err = h.wait("ghost", 2*time.Minute)
	require.Error(t, err)
	require.Contains(t, res.Plugins[0].Error, "i-0badbadbadbadbad0")
	require.Contains(t, res.Plugins[0].Error, "does not exist")
	record("unknown instance", "each plugin failed at once: "+res.Plugins[0].Error, "the error names the instance id")
}

func TestBadInput(t *testing.T) {
	h := newHarness(t)
	b := h.box("bad-input", all())
	before := fleettest.Listing(t, b.PluginRoot)

	for _, tc := range []struct {
		desc    string
		plugins []workflows.Plugin
		field   string
	}{
		{"name with ../", []workflows.Plugin{{Name: "../etc", Version: "1"}}, "Plugins[0].Name"},
		{"name with /", []workflows.Plugin{{Name: "a/b", Version: "1"}}, "Plugins[0].Name"},
		{"name with a space", []workflows.Plugin{{Name: "a b", Version: "1"}}, "Plugins[0].Name"},
		{"shell metacharacters", []workflows.Plugin{{Name: "a;reboot", Version: "1"}}, "Plugins[0].Name"},
		{"unicode look-alike", []workflows.Plugin{{Name: "gіthub-tools", Version: "1"}}, "Plugins[0].Name"},
		{"200-character name", []workflows.Plugin{{Name: strings.Repeat("a", 200), Version: "1"}}, "Plugins[0].Name"},
		{"duplicates", []workflows.Plugin{{Name: "a", Version: "1"}, {Name: "a", Version: "2"}}, "declared twice"},
		{"empty plugin list", nil, "at least one plugin"},
	} {
		_, err := workflows.Start(ctx(t), h.client, workflows.ReconcileInput{WorkspaceID: "bad-input", Plugins: tc.plugins})
		require.ErrorContains(t, err, tc.field, tc.desc)
		// A caller that skips the helper meets the same check in the workflow.
		run, err := h.client.ExecuteWorkflow(ctx(t), client.StartWorkflowOptions{ID: "direct-" + strconv.Itoa(len(tc.desc)) + tc.field[:3], TaskQueue: workflows.TaskQueue},
			workflows.ReconcileWorkspace, workflows.ReconcileInput{WorkspaceID: "bad-input", Plugins: tc.plugins})
		require.NoError(t, err)
		err = run.Get(ctx(t), nil)
		var app *temporal.ApplicationError
		require.ErrorAs(t, err, &app, tc.desc)
		require.True(t, app.NonRetryable())
		require.Contains(t, err.Error(), tc.field)
		record("bad input: "+tc.desc, "refused by the client helper and by the workflow: "+firstLine(err.Error()), "names the field; no tracking row; box untouched")
	}
	_, err := workflows.Start(ctx(t), h.client, workflows.ReconcileInput{WorkspaceID: "no-such-ws", Plugins: declared})
	require.NoError(t, err)
	_, err = h.wait("no-such-ws", time.Minute)
	require.ErrorContains(t, err, `workspace "no-such-ws" is not registered`)
	record("bad input: unknown workspace", firstLine(err.Error()), "fails at once naming the workspace")

	rows, err := h.store.TrackingRows(ctx(t), "bad-input")
	require.NoError(t, err)
	require.Empty(t, rows)
	require.Equal(t, before, fleettest.Listing(t, b.PluginRoot))
	require.Equal(t, 0, b.Logins(), "no connection to the box for bad input")
}

func TestBadManifestsAreRedelivered(t *testing.T) {
	h := newHarness(t)
	bomb := "a: &a [x,x,x,x,x,x,x,x,x]\n"
	prev := "a"
	for _, n := range []string{"b", "c", "d", "e", "f", "g", "h", "i"} {
		bomb += fmt.Sprintf("%s: &%s [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n", n, n, prev, prev, prev, prev, prev, prev, prev, prev, prev)
		prev = n
	}
	manifests := map[string][]byte{
		"p-empty":      nil,
		"p-binary":     {0x7f, 'E', 'L', 'F', 0, 1, 2, 3},
		"p-huge":       bytes.Repeat([]byte("name: p-huge\n"), 10<<20/13),
		"p-bomb":       []byte(bomb + "name: p-bomb\nversion: *i\n"),
		"p-other":      reconcile.Manifest{Name: "someone-else", Version: "1.0.0"}.Marshal(),
		"p-unreadable": reconcile.Manifest{Name: "p-unreadable", Version: "1.0.0"}.Marshal(),
	}
	var plugins []workflows.Plugin
	for name := range manifests {
		require.NoError(t, catalog.Publish(h.catDir, name, "1.0.0", nil))
		plugins = append(plugins, workflows.Plugin{Name: name, Version: "1.0.0"})
	}
	b := h.box("bad-manifests", nil)
	u, err := user.Lookup(h.fleet.User())
	require.NoError(t, err)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for name, data := range manifests {
		dir := filepath.Join(b.PluginRoot, name)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.Chown(dir, uid, gid))
		require.NoError(t, os.WriteFile(filepath.Join(dir, reconcile.ManifestFile), data, 0o644))
	}
	require.NoError(t, os.Chmod(filepath.Join(b.PluginRoot, "p-unreadable", reconcile.ManifestFile), 0))
	h.start("bad-manifests", plugins)
	res, err := h.wait("bad-manifests", 3*time.Minute)
	require.NoError(t, err)
	require.Equal(t, len(manifests), res.Count(workflows.ActionDelivered))
	reasons := map[string]string{}
	for _, p := range res.Plugins {
		reasons[p.Name] = p.Reason
	}
	h.checkBox("bad-manifests", b, plugins, 1)
	for name := range manifests {
		record("manifest on the box: "+strings.TrimPrefix(name, "p-"), "probe said not present ("+reasons[name]+"); delivered", "the plugin is on the box at its version and tracked; one restart for all six")
	}
}

func TestMaliciousBundlesAreRefusedBeforeWriting(t *testing.T) {
	h := newHarness(t)
	bundles := map[string][]byte{}
	for _, shape := range bundletest.Hostile {
		bundles["evil-"+shape.Name] = shape.Bundle(t, "evil-"+shape.Name)
	}
	var plugins []workflows.Plugin
	for name, data := range bundles {
		require.NoError(t, os.MkdirAll(filepath.Join(h.catDir, name), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(h.catDir, name, "1.0.0.tar.gz"), data, 0o644))
		plugins = append(plugins, workflows.Plugin{Name: name, Version: "1.0.0"})
	}
	b := h.box("evil", nil)
	before := fleettest.Listing(t, b.PluginRoot)
	h.start("evil", plugins)
	res, err := h.wait("evil", 3*time.Minute)
	require.ErrorContains(t, err, "type: PluginsFailed")
	require.Len(t, res.Failed, len(bundles))
	for _, p := range res.Plugins {
		require.Equal(t, workflows.ActionFailed, p.Action)
		require.Contains(t, p.Error, "bundle for "+p.Name+" rejected")
		record("catalog bundle: "+strings.TrimPrefix(p.Name, "evil-"), "delivery refused, not retried: "+p.Error, "nothing written in the plugin root; no restart")
	}
	require.Equal(t, before, fleettest.Listing(t, b.PluginRoot))
	require.Equal(t, 0, b.Restarts())
	_, err = os.Stat("/tmp/pwned")
	require.True(t, os.IsNotExist(err))
}

func TestHostKeyMismatch(t *testing.T) {
	h := newHarness(t)
	b := h.box("mitm", all())
	other := h.box("other", all())
	w := storeWorkspace("mitm", b.InstanceID, h)
	w.HostKey = other.HostKey // a machine in the middle would present another key
	w.PluginRoot = b.PluginRoot
	require.NoError(t, h.store.UpsertWorkspace(ctx(t), w))
	h.start("mitm", declared)
	res, err := h.wait("mitm", 2*time.Minute)
	require.Error(t, err)
	require.Contains(t, res.Plugins[0].Error, "host key mismatch on "+b.InstanceID)
	require.Equal(t, 0, b.Logins())
	rows, err := h.store.TrackingRows(ctx(t), "mitm")
	require.NoError(t, err)
	require.Empty(t, rows)
	record("host key mismatch", "each plugin failed at once: "+res.Plugins[0].Error, "no login on the box; no tracking row; not retried")
}

func firstLine(s string) string { return strings.SplitN(s, "\n", 2)[0] }
