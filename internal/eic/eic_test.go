package eic_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle/bundletest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// packPlugin packs a plugin directory with a manifest and the given files.
func packPlugin(t testing.TB, name, version string, files map[string]string) []byte {
	t.Helper()
	dir := t.TempDir()
	m := reconcile.Manifest{Name: name, Version: version}
	require.NoError(t, os.WriteFile(filepath.Join(dir, reconcile.ManifestFile), m.Marshal(), 0o644))
	for p, body := range files {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644))
	}
	data, err := bundle.Pack(dir)
	require.NoError(t, err)
	return data
}

type env struct {
	fleet  *fleet.Fleet
	aws    *fakeaws.Server
	box    *fleet.Box
	access *eic.Access
	target reconcile.Box
	logs   *syncBuf

	mu       sync.Mutex
	recorded map[string]string // TOFU: instance -> host key
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newEnv(t *testing.T, mode eic.Mode, edit func(*eic.Config)) *env {
	t.Helper()
	f := fleettest.New(t)
	box, err := f.AddBox(fleet.BoxSpec{BootInstalled: map[string][]byte{
		"github-tools": packPlugin(t, "github-tools", "1.2.0", map[string]string{"bin/gh": "#!/bin/sh\n"}),
	}})
	require.NoError(t, err)
	return newEnvOn(t, f, box, mode, edit)
}

func newEnvOn(t *testing.T, f *fleet.Fleet, box *fleet.Box, mode eic.Mode, edit func(*eic.Config)) *env {
	t.Helper()
	e := &env{fleet: f, aws: f.AWS, box: box, logs: &syncBuf{}, recorded: map[string]string{}}
	sdk := f.AWS.SDKConfig()
	cfg := eic.Config{
		EC2:             ec2.NewFromConfig(sdk),
		InstanceConnect: ec2instanceconnect.NewFromConfig(sdk),
		Mode:            mode,
		Port:            f.Port,
		EndpointID:      "eice-0123456789abcdef0",
		EndpointURL:     f.AWS.TunnelURL(),
		Credentials:     sdk.Credentials,
		Region:          sdk.Region,
		RestartCommand:  fleet.RestartCommand,
		IdentityCommand: fleet.IdentityCommand,
		Logger:          slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		RecordHostKey: func(_ context.Context, id, key string) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			if old, ok := e.recorded[id]; ok && old != key {
				return errors.New("a different host key is already recorded")
			}
			e.recorded[id] = key
			return nil
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	a, err := eic.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	e.access = a
	e.target = reconcile.Box{
		InstanceID: box.InstanceID,
		OSUser:     f.User(),
		HostKey:    box.HostKey,
		PluginRoot: box.PluginRoot,
	}
	return e
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

func TestPushThenConnect(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode eic.Mode) {
		e := newEnv(t, mode, nil)
		data, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
		require.NoError(t, err, e.box.SSHDLog())
		m, err := reconcile.ParseManifest(data)
		require.NoError(t, err)
		require.Equal(t, "1.2.0", m.Version)

		_, err = e.access.ReadManifest(ctx(t), e.target, "absent-plugin")
		require.ErrorIs(t, err, eic.ErrNotFound)

		require.Equal(t, 1, e.aws.KeyPushes(e.box.InstanceID))
		require.Equal(t, 1, e.box.Logins())
		if mode == eic.Endpoint {
			require.Equal(t, 1, e.aws.Calls("OpenTunnel"))
		} else {
			require.Equal(t, 0, e.aws.Calls("OpenTunnel"))
		}
	})
}

// sshDial logs in to the box with key, bypassing box access.
func sshDial(t *testing.T, e *env, key ed25519.PrivateKey) error {
	t.Helper()
	signer, err := ssh.NewSignerFromKey(key)
	require.NoError(t, err)
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(e.box.HostKey))
	require.NoError(t, err)
	c, err := ssh.Dial("tcp", e.box.Addr(), &ssh.ClientConfig{
		User:            e.fleet.User(),
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hk),
		Timeout:         10 * time.Second,
	})
	if err == nil {
		c.Close()
	}
	return err
}

func pushKey(t *testing.T, e *env, key ed25519.PrivateKey) {
	t.Helper()
	pub, err := ssh.NewPublicKey(key.Public())
	require.NoError(t, err)
	_, err = ec2instanceconnect.NewFromConfig(e.aws.SDKConfig()).SendSSHPublicKey(ctx(t), &ec2instanceconnect.SendSSHPublicKeyInput{
		InstanceId:     aws.String(e.box.InstanceID),
		InstanceOSUser: aws.String(e.fleet.User()),
		SSHPublicKey:   aws.String(string(ssh.MarshalAuthorizedKey(pub))),
	})
	require.NoError(t, err)
}

func TestConnectWithoutPushIsRefused(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	_, never, _ := ed25519.GenerateKey(rand.Reader)
	err := sshDial(t, e, never)
	require.ErrorContains(t, err, "unable to authenticate")

	// The same key once pushed is accepted: the refusal was the missing push.
	pushKey(t, e, never)
	require.NoError(t, sshDial(t, e, never))
}

func TestExpiredKeyOpensNoNewConnection(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pushKey(t, e, key)
	e.aws.Advance(59 * time.Second)
	require.NoError(t, sshDial(t, e, key), "a key is valid for 60 s")
	e.aws.Advance(2 * time.Second)
	require.ErrorContains(t, sshDial(t, e, key), "unable to authenticate")
}

func TestConcurrentOperationsShareOneConnection(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode eic.Mode) {
		e := newEnv(t, mode, nil)
		var wg sync.WaitGroup
		errs := make(chan error, 10)
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, 1, e.aws.KeyPushes(e.box.InstanceID), "key pushes")
		require.Equal(t, 1, e.box.Logins(), "ssh handshakes seen by sshd")
		st := e.access.Stats()
		require.Equal(t, [2]int64{1, 1}, [2]int64{st.KeyPushes, st.Handshakes}, "key pushes, handshakes")
		require.Less(t, st.Commands, int64(10), "the 10 concurrent reads share commands")
	})
}

// Concurrent reads of several plugins on one box, in every state a manifest
// can be in, share a few commands and each gets what a read of its own gets.
func TestConcurrentManifestReadsAreBatchedWithTheSameAnswers(t *testing.T) {
	f := fleettest.New(t)
	names := []string{"alpha", "beta", "gamma", "delta", "link", "dir", "locked", "big"}
	boot := map[string][]byte{}
	for _, n := range names[:4] {
		boot[n] = packPlugin(t, n, "1.0.0", nil)
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

	batched := newEnvOn(t, f, box, eic.Direct, nil)
	single := newEnvOn(t, f, box, eic.Direct, func(c *eic.Config) { c.NoReuse = true })
	type answer struct {
		data     []byte
		notFound bool
		err      string
	}
	read := func(e *env, name string) answer {
		data, err := e.access.ReadManifest(ctx(t), e.target, name)
		a := answer{data: data, notFound: errors.Is(err, eic.ErrNotFound)}
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
	st := batched.access.Stats()
	require.Equal(t, int64(1), st.Handshakes)
	require.LessOrEqual(t, st.Commands, int64(4), "%d reads", rounds*len(names))
}

func TestPinnedHostKeyMismatchIsRefused(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode eic.Mode) {
		e := newEnv(t, mode, nil)
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		otherPub, _ := ssh.NewPublicKey(other.Public())
		e.target.HostKey = string(ssh.MarshalAuthorizedKey(otherPub))
		_, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
		var mismatch *eic.HostKeyMismatchError
		require.ErrorAs(t, err, &mismatch)
		require.Equal(t, e.box.InstanceID, mismatch.InstanceID)
		require.Equal(t, 0, e.box.Logins(), "no login after a mismatch")
	})
}

func TestTrustOnFirstUseRecordsThenPins(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode eic.Mode) {
		e := newEnv(t, mode, func(c *eic.Config) { c.IdleTimeout = 200 * time.Millisecond })
		e.target.HostKey = ""
		_, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
		require.NoError(t, err)
		require.Equal(t, e.box.HostKey, e.recorded[e.box.InstanceID], "the presented key is recorded")

		// The box comes back with another host key (a machine in the middle,
		// or a replaced box): the key trusted first is now pinned.
		e.box.StopSSHD()
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		block, _ := ssh.MarshalPrivateKey(priv, "")
		keyFile := filepath.Join(e.fleet.Dir(), e.box.InstanceID, "ssh_host_ed25519_key")
		require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600))
		require.NoError(t, e.box.StartSSHD())
		time.Sleep(400 * time.Millisecond) // let the idle connection go

		_, err = e.access.ReadManifest(ctx(t), e.target, "github-tools")
		var mismatch *eic.HostKeyMismatchError
		require.ErrorAs(t, err, &mismatch)

		// A fresh process pins from the store through RecordHostKey's refusal.
		fresh := newEnvOn(t, e.fleet, e.box, mode, nil)
		fresh.recorded = e.recorded
		target := e.target
		_, err = fresh.access.ReadManifest(ctx(t), target, "github-tools")
		require.ErrorContains(t, err, "a different host key is already recorded")
	})
}

func TestInstallRejectsUnsafeBundlesBeforeWriting(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	before := fleettest.Listing(t, e.box.PluginRoot)
	lying := bundletest.Raw(t, "evil", tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 10})
	lying = lying[:len(lying)-20] // cut: the archive claims more than it holds
	cases := map[string][]byte{
		"dot-dot":          bundletest.Raw(t, "evil", tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}),
		"absolute":         bundletest.Raw(t, "evil", tar.Header{Name: "/tmp/escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}),
		"symlink out":      bundletest.Raw(t, "evil", tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc"}),
		"symlink relative": bundletest.Raw(t, "evil", tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../../.."}),
		"hard link out":    bundletest.Raw(t, "evil", tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}),
		"device":           bundletest.Raw(t, "evil", tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}),
		"lying size":       lying,
	}
	for desc, data := range cases {
		_, err := e.access.Install(ctx(t), e.target, "evil", "1.0.0", data, nil)
		var be *eic.BundleError
		require.ErrorAs(t, err, &be, desc)
	}
	// The manifest must name the plugin and the version being installed.
	_, err := e.access.Install(ctx(t), e.target, "github-tools", "1", packPlugin(t, "other", "1", nil), nil)
	require.ErrorContains(t, err, `names plugin "other"`)
	_, err = e.access.Install(ctx(t), e.target, "github-tools", "2.0.0", packPlugin(t, "github-tools", "1.9.0", nil), nil)
	var be *eic.BundleError
	require.ErrorAs(t, err, &be)
	require.ErrorContains(t, err, "says version 1.9.0, not 2.0.0")

	require.Equal(t, before, fleettest.Listing(t, e.box.PluginRoot), "nothing written on the box")
	require.Equal(t, 0, e.aws.KeyPushes(e.box.InstanceID), "not even a connection")
}

func TestInstallIsAtomicAndIdempotent(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode eic.Mode) {
		e := newEnv(t, mode, nil)
		v2 := packPlugin(t, "github-tools", "2.0.0", map[string]string{"bin/gh": "v2\n", "lib/x": "x"})
		got, err := e.access.Install(ctx(t), e.target, "github-tools", "2.0.0", v2, nil)
		require.NoError(t, err)
		require.True(t, got.Changed)
		require.Equal(t, e.box.Identity(), got.Identity, "sealed with the runtime it was swapped under")
		m, err := os.ReadFile(e.box.ManifestPath("github-tools"))
		require.NoError(t, err)
		require.Contains(t, string(m), "2.0.0")
		digest, err := os.ReadFile(filepath.Join(e.box.PluginRoot, "github-tools", ".bundle-digest"))
		require.NoError(t, err)
		require.Equal(t, bundle.Digest(v2), strings.TrimSpace(string(digest)))

		st1, err := os.Stat(filepath.Join(e.box.PluginRoot, "github-tools"))
		require.NoError(t, err)
		got, err = e.access.Install(ctx(t), e.target, "github-tools", "2.0.0", v2, nil)
		require.NoError(t, err)
		require.False(t, got.Changed, "the same bundle twice is a no-op")
		st2, err := os.Stat(filepath.Join(e.box.PluginRoot, "github-tools"))
		require.NoError(t, err)
		require.Equal(t, st1.ModTime(), st2.ModTime())
		require.True(t, os.SameFile(st1, st2))

		require.ElementsMatch(t, []string{".", "github-tools", ".github-tools.lock", ".reconciler"}, topLevel(t, e.box.PluginRoot))

		// A manifest edited on the box is repaired, though the bundle's
		// digest file still matches.
		require.NoError(t, os.WriteFile(e.box.ManifestPath("github-tools"), []byte("name: github-tools\nversion: 2.0.0\n# edited\n"), 0o644))
		got, err = e.access.Install(ctx(t), e.target, "github-tools", "2.0.0", v2, nil)
		require.NoError(t, err)
		require.True(t, got.Changed, "repaired")
		m, err = os.ReadFile(e.box.ManifestPath("github-tools"))
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
	big := packPlugin(t, "github-tools", "9.9.9", map[string]string{"blob": string(noise)})

	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	_, err := e.access.Install(c, e.target, "github-tools", "9.9.9", big, func(sent int64) {
		if sent > int64(len(big))/2 {
			cancel()
		}
	})
	require.ErrorIs(t, err, context.Canceled)

	// The box notices the cut, fails the size check and cleans up.
	require.Eventually(t, func() bool {
		return len(topLevel(t, e.box.PluginRoot)) == 4
	}, 10*time.Second, 50*time.Millisecond, "staging left behind: %v", topLevel(t, e.box.PluginRoot))
	require.ElementsMatch(t, []string{".", "github-tools", ".github-tools.lock", ".reconciler"}, topLevel(t, e.box.PluginRoot))
	_, journal, err := e.access.ReadRestartState(ctx(t), e.target)
	require.NoError(t, err)
	require.Empty(t, journal, "a cut transfer swapped nothing and owes nothing")
	m, err := os.ReadFile(e.box.ManifestPath("github-tools"))
	require.NoError(t, err)
	require.Contains(t, string(m), "1.2.0", "previous version intact")

	// And the next attempt completes.
	got, err := e.access.Install(ctx(t), e.target, "github-tools", "9.9.9", big, nil)
	require.NoError(t, err)
	require.True(t, got.Changed)
}

func TestNoKeyMaterialOnDiskInErrorsOrLogs(t *testing.T) {
	var mu sync.Mutex
	var keys []ed25519.PrivateKey
	eic.SetKeyHook(func(k ed25519.PrivateKey) { mu.Lock(); keys = append(keys, k); mu.Unlock() })
	t.Cleanup(func() { eic.SetKeyHook(nil) })

	e := newEnv(t, eic.Direct, nil)
	var errs []string
	_, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	bad := e.target
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	op, _ := ssh.NewPublicKey(other.Public())
	bad.HostKey = string(ssh.MarshalAuthorizedKey(op))
	bad.OSUser = "nobody-here"
	_, err = e.access.ReadManifest(ctx(t), bad, "github-tools")
	require.Error(t, err)
	errs = append(errs, err.Error())

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, keys, 2)
	var needles [][]byte
	for _, k := range keys {
		seed := k.Seed()
		block, _ := ssh.MarshalPrivateKey(k, "")
		needles = append(needles, seed, []byte(hex.EncodeToString(seed)),
			[]byte(base64.StdEncoding.EncodeToString(seed)), []byte(base64.RawStdEncoding.EncodeToString(seed)),
			block.Bytes, pem.EncodeToMemory(block))
	}
	haystacks := map[string][]byte{"logs": []byte(e.logs.String()), "errors": []byte(strings.Join(errs, "\n"))}
	require.NotContains(t, e.logs.String(), "PRIVATE KEY")
	roots := []string{e.fleet.Dir(), os.TempDir()}
	if wd, err := os.Getwd(); err == nil {
		roots = append(roots, wd)
	}
	if home, err := os.UserHomeDir(); err == nil {
		roots = append(roots, filepath.Join(home, ".ssh"))
	}
	for _, root := range roots {
		_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() || fi.Size() > 4<<20 {
				return nil
			}
			if data, err := os.ReadFile(p); err == nil {
				haystacks[p] = data
			}
			return nil
		})
	}
	require.Greater(t, len(haystacks), 5, "the search looked at files")
	for where, data := range haystacks {
		for _, n := range needles {
			require.False(t, bytes.Contains(data, n), "private key material found in %s", where)
		}
	}
}

func TestThrottledKeyPushIsRetried(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	e.aws.SetFaults(fakeaws.Faults{ThrottleSendKeyNext: 2})
	_, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	require.Equal(t, 3, e.aws.Calls("SendSSHPublicKey"), "two throttled, one accepted")
	require.Equal(t, 1, e.aws.KeyPushes(e.box.InstanceID))
}

func TestStoppedOrUnknownInstanceIsANamedError(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	e.aws.SetState(e.box.InstanceID, "stopped")
	_, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
	var se *eic.InstanceStateError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "stopped", se.State)
	require.ErrorContains(t, err, e.box.InstanceID+" is stopped")

	unknown := e.target
	unknown.InstanceID = "i-0deadbeefdeadbeef"
	_, err = e.access.ReadManifest(ctx(t), unknown, "github-tools")
	var ue *eic.UnknownInstanceError
	require.ErrorAs(t, err, &ue)
	require.ErrorContains(t, err, "i-0deadbeefdeadbeef")
}

// The box's side of the restart protocol: swaps are journaled with the
// runtime they happened under; the restart script restarts only when the
// journal owes it (or it is forced), applies a token once, empties the
// journal, and forgets a token whose command failed.
func TestRestartScriptAppliesATokenOnceAndOnlyWhenOwed(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	restart := func(token string, force bool) eic.RestartReply {
		t.Helper()
		r, err := e.access.RestartRuntime(ctx(t), e.target, token, force)
		require.NoError(t, err)
		return r
	}
	first := e.box.Identity()
	require.Equal(t, eic.RestartNotNeeded, restart("a", false).Result, "nothing swapped")
	require.Equal(t, 0, e.box.Restarts())

	_, err := e.access.Install(ctx(t), e.target, "github-tools", "2.0.0", packPlugin(t, "github-tools", "2.0.0", nil), nil)
	require.NoError(t, err)
	id, journal, err := e.access.ReadRestartState(ctx(t), e.target)
	require.NoError(t, err)
	require.Equal(t, first, id)
	require.Equal(t, "github-tools "+first+"\ngithub-tools "+first+"\n", journal, "one line before and one after the swap")

	r := restart("b", false)
	require.Equal(t, eic.RestartDone, r.Result)
	require.NotEqual(t, first, r.Identity)
	require.Equal(t, e.box.Identity(), r.Identity)
	require.Equal(t, eic.RestartAlready, restart("b", false).Result, "a token is applied once")
	require.Equal(t, 1, e.box.Restarts())
	_, journal, err = e.access.ReadRestartState(ctx(t), e.target)
	require.NoError(t, err)
	require.Empty(t, journal)

	require.Equal(t, eic.RestartDone, restart("c", true).Result, "forced")
	require.Equal(t, 2, e.box.Restarts())

	// A command that fails leaves the token unapplied.
	_, err = e.access.Install(ctx(t), e.target, "github-tools", "2.1.0", packPlugin(t, "github-tools", "2.1.0", nil), nil)
	require.NoError(t, err)
	require.NoError(t, e.box.FailRestarts(1, 127))
	r = restart("d", false)
	require.Equal(t, eic.RestartFailed, r.Result)
	require.Equal(t, 127, r.Status)
	require.Contains(t, r.Message, "simulated restart failure")
	require.Equal(t, eic.RestartDone, restart("d", false).Result)
	require.Equal(t, 3, e.box.Restarts())

	// Two attempts with one token at once, during a slow restart: one
	// restart, the other waits for it and answers "already".
	_, err = e.access.Install(ctx(t), e.target, "github-tools", "2.2.0", packPlugin(t, "github-tools", "2.2.0", nil), nil)
	require.NoError(t, err)
	require.NoError(t, e.box.SetRestartDelay(500*time.Millisecond))
	var wg sync.WaitGroup
	results := make([]eic.RestartResult, 2)
	for i := range results {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = restart("e", false).Result }()
	}
	wg.Wait()
	require.ElementsMatch(t, []eic.RestartResult{eic.RestartDone, eic.RestartAlready}, results)
	require.Equal(t, 4, e.box.Restarts())
	events, err := e.box.Events()
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
	e := newEnv(t, eic.Direct, func(c *eic.Config) { c.TokenGrace = time.Second })
	_, err := e.access.Install(ctx(t), e.target, "github-tools", "2.0.0", packPlugin(t, "github-tools", "2.0.0", nil), nil)
	require.NoError(t, err)
	id := e.box.Identity()
	state := filepath.Join(e.box.PluginRoot, ".reconciler")
	require.NoError(t, os.WriteFile(filepath.Join(state, "restart-token"), []byte("t1 "+id+"\n"), 0o644))
	r, err := e.access.RestartRuntime(ctx(t), e.target, "t1", false)
	require.NoError(t, err)
	require.Equal(t, eic.RestartDone, r.Result)
	require.Equal(t, 1, e.box.Restarts())
	require.Equal(t, id, r.Before)
}

// A journal line the runtime has outlived (it restarted some other way) is
// pruned; one it has not is kept, and so is nothing unreadable.
func TestPruneKeepsWhatIsOwed(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	_, err := e.access.Install(ctx(t), e.target, "github-tools", "2.0.0", packPlugin(t, "github-tools", "2.0.0", nil), nil)
	require.NoError(t, err)
	out, err := exec.Command(filepath.Join(e.box.RuntimeDir, "restart")).CombinedOutput() // an operator restarted it
	require.NoError(t, err, string(out))
	_, err = e.access.Install(ctx(t), e.target, "code-review", "1.0.0", packPlugin(t, "code-review", "1.0.0", nil), nil)
	require.NoError(t, err)
	f, err := os.OpenFile(filepath.Join(e.box.PluginRoot, ".reconciler", "journal"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("torn-line\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, e.access.PruneJournal(ctx(t), e.target))
	id, journal, err := e.access.ReadRestartState(ctx(t), e.target)
	require.NoError(t, err)
	require.Equal(t, "code-review "+id+"\ncode-review "+id+"\n", journal)
}

func TestRebootReconnectsWithAFreshKey(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	before, err := e.access.RuntimeIdentity(ctx(t), e.target)
	require.NoError(t, err)
	require.NoError(t, e.access.RebootInstance(ctx(t), e.target))
	var after string
	require.Eventually(t, func() bool {
		after, err = e.access.RuntimeIdentity(ctx(t), e.target)
		return err == nil && after != before
	}, 30*time.Second, 200*time.Millisecond)
	require.Equal(t, 1, e.box.Restarts())
	require.NoError(t, e.access.InstanceRunning(ctx(t), e.target))
	e.aws.SetState(e.box.InstanceID, "stopped")
	var state *eic.InstanceStateError
	require.ErrorAs(t, e.access.InstanceRunning(ctx(t), e.target), &state)
	// One login before and one after; attempts while the box was down may
	// have pushed keys that never logged in.
	require.Equal(t, 2, e.box.Logins())
	require.GreaterOrEqual(t, e.aws.KeyPushes(e.box.InstanceID), 2, "a fresh key after the reboot")
}

func TestIdleConnectionIsClosedAndRedialled(t *testing.T) {
	e := newEnv(t, eic.Direct, func(c *eic.Config) { c.IdleTimeout = 200 * time.Millisecond })
	_, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	time.Sleep(700 * time.Millisecond)
	_, err = e.access.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	require.Equal(t, 2, e.aws.KeyPushes(e.box.InstanceID))
	require.Equal(t, 2, e.box.Logins())
}

func TestNoReuseDialsPerOperation(t *testing.T) {
	e := newEnv(t, eic.Direct, func(c *eic.Config) { c.NoReuse = true })
	for range 3 {
		_, err := e.access.ReadManifest(ctx(t), e.target, "github-tools")
		require.NoError(t, err)
	}
	require.Equal(t, 3, e.aws.KeyPushes(e.box.InstanceID))
	require.Equal(t, 3, e.box.Logins())
}

func TestBoxLatencyIsAddedEachWay(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	_, err := e.access.RuntimeIdentity(ctx(t), e.target) // connect first
	require.NoError(t, err)
	e.box.SetLatency(100 * time.Millisecond)
	start := time.Now()
	_, err = e.access.RuntimeIdentity(ctx(t), e.target)
	require.NoError(t, err)
	// A command costs at least one round trip (open, exec, output, exit
	// overlap), so no less than 2 × 100 ms.
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	e.box.SetLatency(0)
	start = time.Now()
	_, err = e.access.RuntimeIdentity(ctx(t), e.target)
	require.NoError(t, err)
	require.Less(t, time.Since(start), 200*time.Millisecond)
}
