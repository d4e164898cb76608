package onbox_test

import (
	"archive/tar"
	"os"
	"path/filepath"
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
)

// The box edge: bundles and files on the box that are hostile or odd.

// A link that stays inside the plugin lexically but, through another link
// of the archive, resolves to a sibling plugin is refused before anything
// is sent, and the sibling's files are untouched.
func TestALinkChainCannotReachAnotherPlugin(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	victim := e.Box.ManifestPath("github-tools")
	before, err := os.ReadFile(victim)
	require.NoError(t, err)
	for _, name := range []string{"link-chain", "link-through-link"} {
		i := slicesIndex(bundletest.Hostile, name)
		data := bundletest.Hostile[i].Bundle(t, "evil")
		// The archive names the sibling "victim"; on this box it is github-tools.
		data = rename(t, data, "victim", "github-tools")
		_, err := e.Ops.Install(ctx(t), e.Target, "evil", "1.0.0", data, nil)
		var be *bundle.PluginError
		require.ErrorAs(t, err, &be, name)
	}
	after, err := os.ReadFile(victim)
	require.NoError(t, err)
	require.Equal(t, string(before), string(after), "the sibling's manifest is untouched")
	require.NoDirExists(t, filepath.Join(e.Box.PluginRoot, "evil"))
}

func slicesIndex(shapes []bundletest.Shape, name string) int {
	for i, s := range shapes {
		if s.Name == name {
			return i
		}
	}
	panic("no shape " + name)
}

// rename rewrites a bundle's link targets, replacing old by new.
func rename(t *testing.T, data []byte, old, new string) []byte {
	t.Helper()
	var extra []tar.Header
	for _, h := range bundletest.Entries(t, data) {
		if h.Name == "plugin.yaml" {
			continue
		}
		h.Linkname = strings.ReplaceAll(h.Linkname, old, new)
		extra = append(extra, h)
	}
	return bundletest.Raw(t, "evil", extra...)
}

// A prebuilt bundle served as it was built, with read-only directories
// (Bazel and Nix outputs are 0555), installs, is replaced by the next
// version, and is removed, each journaled once before and once after its
// change, leaving nothing behind; a read-only staging directory a killed
// install left does not stop the next one.
func TestReadOnlyDirectoriesDoNotWedgeAPlugin(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	readOnly := func(version string) []byte {
		return bundletest.RawAt(t, "prebuilt", version,
			tar.Header{Name: "lib/", Typeflag: tar.TypeDir, Mode: 0o555},
			tar.Header{Name: "lib/deep/", Typeflag: tar.TypeDir, Mode: 0o555},
			tar.Header{Name: "lib/deep/x", Typeflag: tar.TypeReg, Mode: 0o444, Size: 3},
		)
	}
	for _, v := range []string{"1.0.0", "2.0.0", "3.0.0"} {
		got, err := e.Ops.Install(ctx(t), e.Target, "prebuilt", v, readOnly(v), nil)
		require.NoError(t, err, v)
		require.True(t, got.Changed, v)
		m, err := os.ReadFile(e.Box.ManifestPath("prebuilt"))
		require.NoError(t, err)
		require.Contains(t, string(m), v)
		requireNoLeftovers(t, e, "prebuilt")
	}
	id, journal, err := e.Ops.ReadRestartState(ctx(t), e.Target)
	require.NoError(t, err)
	require.Equal(t, strings.Repeat("prebuilt "+id+"\n", 6), journal, "three swaps, each journaled before and after")

	// A killed install's staging directory, read-only inside.
	stage := onbox.PathsOf(e.Target, "prebuilt").Stage
	require.NoError(t, os.MkdirAll(filepath.Join(stage, "lib", "deep"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(stage, "lib", "deep", "x"), []byte("x"), 0o444))
	chownLikeTheBox(t, e.Box, stage)
	require.NoError(t, os.Chmod(filepath.Join(stage, "lib", "deep"), 0o555))
	require.NoError(t, os.Chmod(filepath.Join(stage, "lib"), 0o555))
	got, err := e.Ops.Install(ctx(t), e.Target, "prebuilt", "4.0.0", readOnly("4.0.0"), nil)
	require.NoError(t, err)
	require.True(t, got.Changed)
	requireNoLeftovers(t, e, "prebuilt")

	rm, err := e.Ops.Remove(ctx(t), e.Target, "prebuilt")
	require.NoError(t, err)
	require.True(t, rm.Changed)
	require.NoDirExists(t, filepath.Join(e.Box.PluginRoot, "prebuilt"))
	requireNoLeftovers(t, e, "prebuilt")
}

// chownLikeTheBox gives what a test made on the box to the box's login
// user, as if the box had made it.
func chownLikeTheBox(t *testing.T, b *fleet.Box, top string) {
	t.Helper()
	root, err := os.Stat(b.PluginRoot)
	require.NoError(t, err)
	uid, gid := ownerOf(root)
	require.NoError(t, filepath.Walk(top, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}))
}

// requireNoLeftovers: nothing of the plugin's but its directory and lock
// in the plugin root.
func requireNoLeftovers(t *testing.T, e *fleettest.AccessEnv, name string) {
	t.Helper()
	lock := filepath.Base(onbox.PathsOf(e.Target, name).Lock)
	for _, n := range topLevel(t, e.Box.PluginRoot) {
		if n == "." || n == name || n == ".reconciler" || n == lock {
			continue
		}
		if strings.Contains(n, name) || strings.HasPrefix(n, ".batch-") {
			t.Fatalf("left behind in the plugin root: %s", n)
		}
	}
}

// A dangling symlink where a plugin's directory goes is renamed aside,
// never followed: the install completes, journaled once before and once
// after, and nothing is created where the link pointed.
func TestADanglingLinkAtAPluginIsReplaced(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	nowhere := filepath.Join(t.TempDir(), "nowhere")
	require.NoError(t, os.Symlink(nowhere, filepath.Join(e.Box.PluginRoot, "dangle")))
	got, err := e.Ops.Install(ctx(t), e.Target, "dangle", "1.0.0", fleettest.PackPlugin(t, "dangle", "1.0.0", nil), nil)
	require.NoError(t, err)
	require.True(t, got.Changed)
	fi, err := os.Lstat(filepath.Join(e.Box.PluginRoot, "dangle"))
	require.NoError(t, err)
	require.True(t, fi.IsDir(), "a directory, not the link")
	require.NoFileExists(t, nowhere)
	require.NoDirExists(t, nowhere)
	id, journal, err := e.Ops.ReadRestartState(ctx(t), e.Target)
	require.NoError(t, err)
	require.Equal(t, "dangle "+id+"\ndangle "+id+"\n", journal)
	requireNoLeftovers(t, e, "dangle")

	// Installed again: unchanged, nothing more journaled.
	again, err := e.Ops.Install(ctx(t), e.Target, "dangle", "1.0.0", fleettest.PackPlugin(t, "dangle", "1.0.0", nil), nil)
	require.NoError(t, err)
	require.False(t, again.Changed)
}

// Two plugins whose names differ by a suffix ("x" and "x.tgz") never share
// a staging path: a removal of one while the other's install is between
// its unpack and its swap leaves that install whole.
func TestStagingPathsOfTwoPluginsNeverMeet(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	// An identity command that is slow once, when a flag file is there: the
	// install waits in it with its bundle unpacked and not yet swapped.
	flag := filepath.Join(e.Box.RuntimeDir, "slow-once")
	slow := `if [ -f "$RUNTIME_DIR/slow-once" ]; then rm -f "$RUNTIME_DIR/slow-once"; sleep 2; fi; ` + fleet.IdentityCommand
	ops := onbox.New(e.Access, onbox.Config{RestartCommand: fleet.RestartCommand, IdentityCommand: slow})
	t.Cleanup(ops.Close)
	require.NoError(t, os.WriteFile(flag, nil, 0o666))
	chownLikeTheBox(t, e.Box, flag)

	var wg sync.WaitGroup
	var installErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, installErr = ops.Install(ctx(t), e.Target, "x.tgz", "1.0.0", fleettest.PackPlugin(t, "x.tgz", "1.0.0", map[string]string{"bin/run": "x"}), nil)
	}()
	require.Eventually(t, func() bool { _, err := os.Stat(flag); return os.IsNotExist(err) }, 20*time.Second, 10*time.Millisecond)
	rm, err := ops.Remove(ctx(t), e.Target, "x")
	require.NoError(t, err)
	require.False(t, rm.Changed, "the box has no plugin x")
	wg.Wait()
	require.NoError(t, installErr)
	m, err := os.ReadFile(e.Box.ManifestPath("x.tgz"))
	require.NoError(t, err)
	require.Contains(t, string(m), "x.tgz")
	require.FileExists(t, filepath.Join(e.Box.PluginRoot, "x.tgz", "bin", "run"))

	// Every path of a plugin is its own: no name's paths are another's.
	names := []string{"x", "x.tgz", "x.lock", "lock", "staging-x", "previous-x", "x-", "x.", "removing-x", "a.b", "a"}
	seen := map[string]string{}
	for _, n := range names {
		p := onbox.PathsOf(e.Target, n)
		for _, path := range []string{p.Dir, p.Stage, p.StageFile, p.Previous, p.Aside, p.Lock} {
			require.NotContains(t, seen, path, "%s's %s is %s's too", n, path, seen[path])
			seen[path] = n
		}
	}
}

func ownerOf(fi os.FileInfo) (uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}
