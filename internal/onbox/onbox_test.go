package onbox_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle/bundletest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

func newEnv(t *testing.T, mode eic.Mode, edit func(*eic.Config)) *fleettest.AccessEnv {
	t.Helper()
	f := fleettest.New(t)
	box, err := f.AddBox(fleet.BoxSpec{BootInstalled: map[string][]byte{
		"github-tools": fleettest.PackPlugin(t, "github-tools", "1.2.0", map[string]string{"bin/gh": "#!/bin/sh\n"}),
	}})
	require.NoError(t, err)
	return fleettest.NewAccess(t, f, box, mode, edit)
}

func forEachMode(t *testing.T, fn func(t *testing.T, mode eic.Mode)) {
	for _, m := range []eic.Mode{eic.Direct, eic.Endpoint} {
		t.Run(string(m), func(t *testing.T) { t.Parallel(); fn(t, m) })
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// Concurrent reads of several plugins on one box, in every state a manifest
// can be in, share a few commands and each gets what a read of its own gets.
func TestConcurrentManifestReadsAreBatchedWithTheSameAnswers(t *testing.T) {
	f := fleettest.New(t)
	names := []string{"alpha", "beta", "gamma", "delta", "link", "dir", "locked", "big"}
	boot := map[string][]byte{}
	for _, n := range names[:4] {
		boot[n] = fleettest.PackPlugin(t, n, "1.0.0", nil)
	}
	box, err := f.AddBox(fleet.BoxSpec{BootInstalled: boot})
	require.NoError(t, err)
	root := box.PluginRoot
	require.NoError(t, os.RemoveAll(filepath.Join(root, "delta"))) // missing
	for _, n := range []string{"link", "dir", "locked", "big"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, n), 0o755))
	}
	require.NoError(t, os.Symlink(filepath.Join(root, "alpha", reconcile.ManifestFile), filepath.Join(root, "link", reconcile.ManifestFile)))
	require.NoError(t, os.Mkdir(filepath.Join(root, "dir", reconcile.ManifestFile), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "locked", reconcile.ManifestFile), []byte("name: locked\n"), 0o000))
	require.NoError(t, os.WriteFile(filepath.Join(root, "big", reconcile.ManifestFile), bytes.Repeat([]byte("x\n"), reconcile.MaxManifestBytes), 0o644))

	batched := fleettest.NewAccess(t, f, box, eic.Direct, nil)
	single := fleettest.NewAccess(t, f, box, eic.Direct, func(c *eic.Config) { c.DialPerOperation = true })
	type answer struct {
		data     []byte
		notFound bool
		err      string
	}
	read := func(e *fleettest.AccessEnv, name string) answer {
		data, err := e.Ops.ReadManifest(ctx(t), e.Target, name)
		a := answer{data: data, notFound: errors.Is(err, onbox.ErrNotFound)}
		if err != nil {
			a.err = err.Error()
		}
		return a
	}
	want := map[string]answer{}
	for _, n := range names {
		want[n] = read(single, n)
	}
	require.Equal(t, reconcile.MaxManifestBytes+1, len(want["big"].data), "one byte over, so the caller sees it is too large")
	require.Contains(t, string(want["alpha"].data), "name: alpha")
	for _, n := range []string{"delta", "link", "dir", "locked"} {
		require.True(t, want[n].notFound, n)
	}

	const rounds = 3
	var wg sync.WaitGroup
	got := make([]map[string]answer, rounds)
	var mu sync.Mutex
	for r := range rounds {
		got[r] = map[string]answer{}
		for _, n := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := read(batched, n)
				mu.Lock()
				got[r][n] = a
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	for r := range rounds {
		require.Equal(t, want, got[r], "round %d", r)
	}
	st := batched.Access.Stats()
	require.Equal(t, int64(1), st.Handshakes)
	require.LessOrEqual(t, st.Commands, int64(4), "%d reads", rounds*len(names))
}

func TestInstallRejectsUnsafeBundlesBeforeWriting(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	before := fleettest.Listing(t, e.Box.PluginRoot)
	for _, shape := range bundletest.Hostile {
		_, err := e.Ops.Install(ctx(t), e.Target, "evil", "1.0.0", shape.Bundle(t, "evil"), nil)
		var be *bundle.PluginError
		require.ErrorAs(t, err, &be, shape.Name)
	}
	// The manifest must name the plugin and the version being installed.
	_, err := e.Ops.Install(ctx(t), e.Target, "github-tools", "1", fleettest.PackPlugin(t, "other", "1", nil), nil)
	require.ErrorContains(t, err, `names plugin "other"`)
	_, err = e.Ops.Install(ctx(t), e.Target, "github-tools", "2.0.0", fleettest.PackPlugin(t, "github-tools", "1.9.0", nil), nil)
	var be *bundle.PluginError
	require.ErrorAs(t, err, &be)
	require.ErrorContains(t, err, "says version 1.9.0, not 2.0.0")

	require.Equal(t, before, fleettest.Listing(t, e.Box.PluginRoot), "nothing written on the box")
	require.Equal(t, 0, e.Fleet.AWS.KeyPushes(e.Box.InstanceID), "not even a connection")
}

func TestInstallIsAtomicAndIdempotent(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode eic.Mode) {
		e := newEnv(t, mode, nil)
		v2 := fleettest.PackPlugin(t, "github-tools", "2.0.0", map[string]string{"bin/gh": "v2\n", "lib/x": "x"})
		got, err := e.Ops.Install(ctx(t), e.Target, "github-tools", "2.0.0", v2, nil)
		require.NoError(t, err)
		require.True(t, got.Changed)
		require.Equal(t, e.Box.Identity(), got.Identity, "sealed with the runtime it was swapped under")
		m, err := os.ReadFile(e.Box.ManifestPath("github-tools"))
		require.NoError(t, err)
		require.Contains(t, string(m), "2.0.0")
		digest, err := os.ReadFile(filepath.Join(e.Box.PluginRoot, "github-tools", ".bundle-digest"))
		require.NoError(t, err)
		require.Equal(t, bundle.Digest(v2), strings.TrimSpace(string(digest)))

		st1, err := os.Stat(filepath.Join(e.Box.PluginRoot, "github-tools"))
		require.NoError(t, err)
		got, err = e.Ops.Install(ctx(t), e.Target, "github-tools", "2.0.0", v2, nil)
		require.NoError(t, err)
		require.False(t, got.Changed, "the same bundle twice is a no-op")
		st2, err := os.Stat(filepath.Join(e.Box.PluginRoot, "github-tools"))
		require.NoError(t, err)
		require.Equal(t, st1.ModTime(), st2.ModTime())
		require.True(t, os.SameFile(st1, st2))

		require.ElementsMatch(t, []string{".", "github-tools", ".lock+github-tools", ".reconciler"}, topLevel(t, e.Box.PluginRoot))

		// A manifest edited on the box is repaired, though the bundle's
		// digest file still matches.
		require.NoError(t, os.WriteFile(e.Box.ManifestPath("github-tools"), []byte("name: github-tools\nversion: 2.0.0\n# edited\n"), 0o644))
		got, err = e.Ops.Install(ctx(t), e.Target, "github-tools", "2.0.0", v2, nil)
		require.NoError(t, err)
		require.True(t, got.Changed, "repaired")
		m, err = os.ReadFile(e.Box.ManifestPath("github-tools"))
		require.NoError(t, err)
		require.NotContains(t, string(m), "edited")
	})
}

func topLevel(t *testing.T, dir string) []string {
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	out := []string{"."}
	for _, d := range ents {
		out = append(out, d.Name())
	}
	return out
}

func TestCutTransferKeepsPreviousVersion(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	noise := make([]byte, 2<<20)
	_, _ = rand.Read(noise)
	big := fleettest.PackPlugin(t, "github-tools", "9.9.9", map[string]string{"blob": string(noise)})

	before := topLevel(t, e.Box.PluginRoot)
	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	_, err := e.Ops.Install(c, e.Target, "github-tools", "9.9.9", big, func(sent int64) {
		if sent > int64(len(big))/2 {
			cancel()
		}
	})
	require.ErrorIs(t, err, context.Canceled)

	// The box notices the cut (the transfer's archive ends early) and
	// cleans up before any install starts.
	require.Eventually(t, func() bool {
		return slices.Equal(before, topLevel(t, e.Box.PluginRoot))
	}, 10*time.Second, 50*time.Millisecond, "staging left behind: %v", topLevel(t, e.Box.PluginRoot))
	_, journal, err := e.Ops.ReadRestartState(ctx(t), e.Target)
	require.NoError(t, err)
	require.Empty(t, journal, "a cut transfer swapped nothing and owes nothing")
	m, err := os.ReadFile(e.Box.ManifestPath("github-tools"))
	require.NoError(t, err)
	require.Contains(t, string(m), "1.2.0", "previous version intact")

	// And the next attempt completes.
	got, err := e.Ops.Install(ctx(t), e.Target, "github-tools", "9.9.9", big, nil)
	require.NoError(t, err)
	require.True(t, got.Changed)
}

// The box's side of the restart protocol: swaps are journaled with the
// runtime they happened under; the restart script restarts only when the
// journal owes it (or it is forced), applies a token once, empties the
// journal, and forgets a token whose command failed.
func TestRestartScriptAppliesATokenOnceAndOnlyWhenOwed(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	restart := func(token string, force bool) onbox.RestartReply {
		t.Helper()
		r, err := e.Ops.RestartRuntime(ctx(t), e.Target, token, force)
		require.NoError(t, err)
		return r
	}
	first := e.Box.Identity()
	require.Equal(t, onbox.RestartNotNeeded, restart("a", false).Result, "nothing swapped")
	require.Equal(t, 0, e.Box.Restarts())

	_, err := e.Ops.Install(ctx(t), e.Target, "github-tools", "2.0.0", fleettest.PackPlugin(t, "github-tools", "2.0.0", nil), nil)
	require.NoError(t, err)
	id, journal, err := e.Ops.ReadRestartState(ctx(t), e.Target)
	require.NoError(t, err)
	require.Equal(t, first, id)
	require.Equal(t, "github-tools "+first+"\ngithub-tools "+first+"\n", journal, "one line before and one after the swap")

	r := restart("b", false)
	require.Equal(t, onbox.RestartDone, r.Result)
	require.NotEqual(t, first, r.Identity)
	require.Equal(t, e.Box.Identity(), r.Identity)
	require.Equal(t, onbox.RestartAlready, restart("b", false).Result, "a token is applied once")
	require.Equal(t, 1, e.Box.Restarts())
	_, journal, err = e.Ops.ReadRestartState(ctx(t), e.Target)
	require.NoError(t, err)
	require.Empty(t, journal)

	require.Equal(t, onbox.RestartDone, restart("c", true).Result, "forced")
	require.Equal(t, 2, e.Box.Restarts())

	// A command that fails leaves the token unapplied.
	_, err = e.Ops.Install(ctx(t), e.Target, "github-tools", "2.1.0", fleettest.PackPlugin(t, "github-tools", "2.1.0", nil), nil)
	require.NoError(t, err)
	require.NoError(t, e.Box.FailRestarts(1, 127))
	r = restart("d", false)
	require.Equal(t, onbox.RestartFailed, r.Result)
	require.Equal(t, 127, r.Status)
	require.Contains(t, r.Message, "simulated restart failure")
	require.Equal(t, onbox.RestartDone, restart("d", false).Result)
	require.Equal(t, 3, e.Box.Restarts())

	// Two attempts with one token at once, during a slow restart: one
	// restart, the other waits for it and answers "already".
	_, err = e.Ops.Install(ctx(t), e.Target, "github-tools", "2.2.0", fleettest.PackPlugin(t, "github-tools", "2.2.0", nil), nil)
	require.NoError(t, err)
	require.NoError(t, e.Box.SetRestartDelay(500*time.Millisecond))
	var wg sync.WaitGroup
	results := make([]onbox.RestartResult, 2)
	for i := range results {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = restart("e", false).Result }()
	}
	wg.Wait()
	require.ElementsMatch(t, []onbox.RestartResult{onbox.RestartDone, onbox.RestartAlready}, results)
	require.Equal(t, 4, e.Box.Restarts())
	events, err := e.Box.Events()
	require.NoError(t, err)
	var kinds []fleet.EventKind
	for _, ev := range events {
		kinds = append(kinds, ev.Kind)
	}
	// Each install renames the old version away, then the new one in.
	require.Equal(t, []fleet.EventKind{fleet.Removal, fleet.Swap, fleet.Restart, fleet.Restart,
		fleet.Removal, fleet.Swap, fleet.Restart, fleet.Removal, fleet.Swap, fleet.Restart}, kinds)
	forced := append(append([]fleet.Event(nil), events[:3]...), events[4:]...)
	require.NoError(t, fleettest.CheckRestarts(forced), "the forced restart aside, every swap had exactly one: %v", events)
}

// A token whose script died before the command took effect (the token was
// written, the runtime never restarted) is applied again after the grace:
// the box is not wedged answering "already" for ever.
func TestATokenLeftWithoutEffectIsAppliedAgain(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	e.Ops = onbox.New(e.Access, onbox.Config{RestartCommand: fleet.RestartCommand, IdentityCommand: fleet.IdentityCommand, TokenGrace: time.Second})
	t.Cleanup(e.Ops.Close)
	_, err := e.Ops.Install(ctx(t), e.Target, "github-tools", "2.0.0", fleettest.PackPlugin(t, "github-tools", "2.0.0", nil), nil)
	require.NoError(t, err)
	id := e.Box.Identity()
	state := filepath.Join(e.Box.PluginRoot, ".reconciler")
	require.NoError(t, os.WriteFile(filepath.Join(state, "restart-token"), []byte("t1 "+id+"\n"), 0o644))
	r, err := e.Ops.RestartRuntime(ctx(t), e.Target, "t1", false)
	require.NoError(t, err)
	require.Equal(t, onbox.RestartDone, r.Result)
	require.Equal(t, 1, e.Box.Restarts())
	require.Equal(t, id, r.Before)
}

// A journal line the runtime has outlived (it restarted some other way) is
// pruned; one it has not is kept, and so is nothing unreadable.
func TestPruneKeepsWhatIsOwed(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	_, err := e.Ops.Install(ctx(t), e.Target, "github-tools", "2.0.0", fleettest.PackPlugin(t, "github-tools", "2.0.0", nil), nil)
	require.NoError(t, err)
	out, err := exec.Command(filepath.Join(e.Box.RuntimeDir, "restart")).CombinedOutput() // an operator restarted it
	require.NoError(t, err, string(out))
	_, err = e.Ops.Install(ctx(t), e.Target, "code-review", "1.0.0", fleettest.PackPlugin(t, "code-review", "1.0.0", nil), nil)
	require.NoError(t, err)
	f, err := os.OpenFile(filepath.Join(e.Box.PluginRoot, ".reconciler", "journal"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("torn-line\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, e.Ops.PruneJournal(ctx(t), e.Target))
	id, journal, err := e.Ops.ReadRestartState(ctx(t), e.Target)
	require.NoError(t, err)
	require.Equal(t, "code-review "+id+"\ncode-review "+id+"\n", journal)
}

// A removal renames the plugin aside and deletes it, journaled as a swap;
// what the box does not have is a no-op; a symlink is removed, never
// followed out of the plugin root.
func TestRemoveIsAtomicJournaledAndStaysInTheRoot(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	got, err := e.Ops.Remove(ctx(t), e.Target, "github-tools")
	require.NoError(t, err)
	require.True(t, got.Changed)
	require.Equal(t, e.Box.Identity(), got.Identity)
	_, err = os.Stat(filepath.Join(e.Box.PluginRoot, "github-tools"))
	require.True(t, os.IsNotExist(err))
	id, journal, err := e.Ops.ReadRestartState(ctx(t), e.Target)
	require.NoError(t, err)
	require.Equal(t, "github-tools "+id+"\ngithub-tools "+id+"\n", journal, "owed like a swap")

	again, err := e.Ops.Remove(ctx(t), e.Target, "github-tools")
	require.NoError(t, err)
	require.False(t, again.Changed, "removing what is gone is a no-op")

	outside := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(outside, "keep"), []byte("x"), 0o644))
	require.NoError(t, os.Symlink(outside, filepath.Join(e.Box.PluginRoot, "linked")))
	got, err = e.Ops.Remove(ctx(t), e.Target, "linked")
	require.NoError(t, err)
	require.True(t, got.Changed)
	_, err = os.Lstat(filepath.Join(e.Box.PluginRoot, "linked"))
	require.True(t, os.IsNotExist(err))
	_, err = os.Stat(filepath.Join(outside, "keep"))
	require.NoError(t, err, "the link's target is untouched")
	_, err = e.Ops.Remove(ctx(t), e.Target, "../etc")
	require.Error(t, err)
	events, err := e.Box.Events()
	require.NoError(t, err)
	require.Equal(t, []fleet.EventKind{fleet.Removal}, kinds(events), "the symlink is not a plugin directory: one removal recorded")
	require.ElementsMatch(t, []string{".", ".lock+github-tools", ".lock+linked", ".reconciler"}, topLevel(t, e.Box.PluginRoot))
}

func kinds(events []fleet.Event) []fleet.EventKind {
	var out []fleet.EventKind
	for _, e := range events {
		out = append(out, e.Kind)
	}
	return out
}

// Installs that reach a box together share one transfer and one command;
// each bundle is still installed and answered on its own: one that fails
// on the box fails alone, and one whose caller has gone before its command
// starts is not installed.
func TestConcurrentInstallsShareACommandAndFailAlone(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	_, err := e.Ops.ReadManifest(ctx(t), e.Target, "github-tools") // dial first
	require.NoError(t, err)
	// "broken" cannot take its lock on the box.
	require.NoError(t, os.MkdirAll(filepath.Join(e.Box.PluginRoot, ".lock+broken"), 0o755))
	noise := make([]byte, 1<<20)
	_, _ = rand.Read(noise)
	first := fleettest.PackPlugin(t, "first", "1.0.0", map[string]string{"blob": string(noise)})

	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	before := e.Access.Stats().Commands
	type outcome struct {
		got onbox.Installed
		err error
	}
	results := map[string]outcome{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	install := func(c context.Context, name string, data []byte, progress func(int64)) {
		defer wg.Done()
		got, err := e.Ops.Install(c, e.Target, name, "1.0.0", data, progress)
		mu.Lock()
		results[name] = outcome{got, err}
		mu.Unlock()
	}
	// The first install's transfer is held, so the others gather behind it.
	wg.Add(1)
	go install(ctx(t), "first", first, func(int64) {
		once.Do(func() { close(started); <-release })
	})
	<-started
	names := []string{"alpha", "beta", "gamma", "broken"}
	for _, n := range names {
		wg.Add(1)
		go install(ctx(t), n, fleettest.PackPlugin(t, n, "1.0.0", map[string]string{"bin/run": n}), nil)
	}
	gone, cancel := context.WithCancel(ctx(t))
	wg.Add(1)
	go install(gone, "gone", fleettest.PackPlugin(t, "gone", "1.0.0", nil), nil)
	time.Sleep(300 * time.Millisecond) // let them join the next batch
	cancel()
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()

	require.Equal(t, int64(2), e.Access.Stats().Commands-before, "the held install, then one command for the rest")
	for _, n := range []string{"first", "alpha", "beta", "gamma"} {
		r := results[n]
		require.NoError(t, r.err, n)
		require.True(t, r.got.Changed, n)
		require.Equal(t, e.Box.Identity(), r.got.Identity, n)
		require.Contains(t, string(r.got.Manifest), "name: "+n, "%s: the manifest read back", n)
		m, err := os.ReadFile(e.Box.ManifestPath(n))
		require.NoError(t, err)
		require.Equal(t, string(m), string(r.got.Manifest), n)
	}
	require.ErrorContains(t, results["broken"].err, "install broken on "+e.Box.InstanceID)
	require.NoDirExists(t, filepath.Join(e.Box.PluginRoot, "broken"))
	require.ErrorIs(t, results["gone"].err, context.Canceled)
	require.NoDirExists(t, filepath.Join(e.Box.PluginRoot, "gone"), "a caller gone before its command started: not installed")

	_, journal, err := e.Ops.ReadRestartState(ctx(t), e.Target)
	require.NoError(t, err)
	for _, n := range []string{"first", "alpha", "beta", "gamma"} {
		require.Equal(t, 2, strings.Count(journal, n+" "), "%s journaled before and after its swap:\n%s", n, journal)
	}
	require.NotContains(t, journal, "broken")
	require.NotContains(t, journal, "gone")
	for _, name := range topLevel(t, e.Box.PluginRoot) {
		require.False(t, strings.HasPrefix(name, ".batch-") || strings.HasPrefix(name, ".stage+"), "left behind: %s", name)
	}
}

// A batch directory left by a shell killed outright (no EXIT trap) is
// removed by a later install once it is an hour old; a recent one, which
// may be another batch's in progress, is left alone.
func TestInstallSweepsOldBatchDirectories(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	old, recent := filepath.Join(e.Box.PluginRoot, ".batch-killed"), filepath.Join(e.Box.PluginRoot, ".batch-running")
	for _, d := range []string{old, recent} {
		require.NoError(t, os.MkdirAll(d, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(d, "0"), []byte("bundle"), 0o600))
	}
	// Made by the box's login user, as a batch is.
	root, err := os.Stat(e.Box.PluginRoot)
	require.NoError(t, err)
	owner := root.Sys().(*syscall.Stat_t)
	for _, p := range []string{old, filepath.Join(old, "0"), recent, filepath.Join(recent, "0")} {
		require.NoError(t, os.Lchown(p, int(owner.Uid), int(owner.Gid)))
	}
	twoHoursAgo := time.Now().Add(-2 * time.Hour)
	require.NoError(t, os.Chtimes(old, twoHoursAgo, twoHoursAgo))
	_, err = e.Ops.Install(ctx(t), e.Target, "alpha", "1.0.0", fleettest.PackPlugin(t, "alpha", "1.0.0", nil), nil)
	require.NoError(t, err)
	require.NoDirExists(t, old)
	require.DirExists(t, recent)
}
