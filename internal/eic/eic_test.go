package eic_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

var packPlugin = fleettest.PackPlugin

// env is box access to one box of a fleet (see fleettest.AccessEnv).
type env struct {
	*fleettest.AccessEnv
	fleet  *fleet.Fleet
	aws    *fakeaws.Server
	box    *fleet.Box
	access *eic.Access
	ops    *onbox.Ops
	target reconcile.Box
	logs   *fleettest.SyncBuffer
}

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
	a := fleettest.NewAccess(t, f, box, mode, edit)
	return &env{AccessEnv: a, fleet: f, aws: f.AWS, box: box, access: a.Access, ops: a.Ops, target: a.Target, logs: a.Logs}
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
		data, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
		require.NoError(t, err, e.box.SSHDLog())
		m, err := reconcile.ParseManifest(data)
		require.NoError(t, err)
		require.Equal(t, "1.2.0", m.Version)

		_, err = e.ops.ReadManifest(ctx(t), e.target, "absent-plugin")
		require.ErrorIs(t, err, onbox.ErrNotFound)

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
				_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
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

func TestPinnedHostKeyMismatchIsRefused(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode eic.Mode) {
		e := newEnv(t, mode, nil)
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		otherPub, _ := ssh.NewPublicKey(other.Public())
		e.target.HostKey = string(ssh.MarshalAuthorizedKey(otherPub))
		_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
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
		_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
		require.NoError(t, err)
		require.Equal(t, e.box.HostKey, e.Recorded(e.box.InstanceID), "the presented key is recorded")

		// The box comes back with another host key (a machine in the middle,
		// or a replaced box): the key trusted first is now pinned.
		e.box.StopSSHD()
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		block, _ := ssh.MarshalPrivateKey(priv, "")
		keyFile := filepath.Join(e.fleet.Dir(), e.box.InstanceID, "ssh_host_ed25519_key")
		require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600))
		require.NoError(t, e.box.StartSSHD())
		require.Eventually(t, func() bool { return e.box.OpenConnections() == 0 }, 5*time.Second, 10*time.Millisecond, "the idle connection went")

		_, err = e.ops.ReadManifest(ctx(t), e.target, "github-tools")
		var mismatch *eic.HostKeyMismatchError
		require.ErrorAs(t, err, &mismatch)

		// A fresh process pins from the store through RecordHostKey's refusal.
		fresh := newEnvOn(t, e.fleet, e.box, mode, nil)
		fresh.Remember(e.box.InstanceID, e.Recorded(e.box.InstanceID))
		target := e.target
		_, err = fresh.ops.ReadManifest(ctx(t), target, "github-tools")
		require.ErrorContains(t, err, "a different host key is already recorded")
	})
}

func TestNoKeyMaterialOnDiskInErrorsOrLogs(t *testing.T) {
	var mu sync.Mutex
	var keys []ed25519.PrivateKey
	eic.SetKeyHook(func(k ed25519.PrivateKey) { mu.Lock(); keys = append(keys, k); mu.Unlock() })
	t.Cleanup(func() { eic.SetKeyHook(nil) })

	e := newEnv(t, eic.Direct, nil)
	var errs []string
	_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	bad := e.target
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	op, _ := ssh.NewPublicKey(other.Public())
	bad.HostKey = string(ssh.MarshalAuthorizedKey(op))
	bad.OSUser = "nobody-here"
	_, err = e.ops.ReadManifest(ctx(t), bad, "github-tools")
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
	_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	require.Equal(t, 3, e.aws.Calls("SendSSHPublicKey"), "two throttled, one accepted")
	require.Equal(t, 1, e.aws.KeyPushes(e.box.InstanceID))
}

func TestStoppedOrUnknownInstanceIsANamedError(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	e.aws.SetState(e.box.InstanceID, "stopped")
	_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
	var se *eic.InstanceStateError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "stopped", se.State)
	require.ErrorContains(t, err, e.box.InstanceID+" is stopped")

	unknown := e.target
	unknown.InstanceID = "i-0deadbeefdeadbeef"
	_, err = e.ops.ReadManifest(ctx(t), unknown, "github-tools")
	var ue *eic.UnknownInstanceError
	require.ErrorAs(t, err, &ue)
	require.ErrorContains(t, err, "i-0deadbeefdeadbeef")
}

func TestRebootReconnectsWithAFreshKey(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	before, err := e.ops.RuntimeIdentity(ctx(t), e.target)
	require.NoError(t, err)
	require.NoError(t, e.access.RebootInstance(ctx(t), e.target))
	var after string
	require.Eventually(t, func() bool {
		after, err = e.ops.RuntimeIdentity(ctx(t), e.target)
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
	_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return e.box.OpenConnections() == 0 }, 5*time.Second, 10*time.Millisecond, "the idle connection was closed")
	_, err = e.ops.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	require.Equal(t, 2, e.aws.KeyPushes(e.box.InstanceID))
	require.Equal(t, 2, e.box.Logins())
}

func TestDialPerOperationDialsPerOperation(t *testing.T) {
	e := newEnv(t, eic.Direct, func(c *eic.Config) { c.DialPerOperation = true })
	for range 3 {
		_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
		require.NoError(t, err)
	}
	require.Equal(t, 3, e.aws.KeyPushes(e.box.InstanceID))
	require.Equal(t, 3, e.box.Logins())
}

func TestBoxLatencyIsAddedEachWay(t *testing.T) {
	e := newEnv(t, eic.Direct, nil)
	_, err := e.ops.RuntimeIdentity(ctx(t), e.target) // connect first
	require.NoError(t, err)
	e.box.SetLatency(100 * time.Millisecond)
	start := time.Now()
	_, err = e.ops.RuntimeIdentity(ctx(t), e.target)
	require.NoError(t, err)
	// A command costs at least one round trip (open, exec, output, exit
	// overlap), so no less than 2 × 100 ms.
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	e.box.SetLatency(0)
	start = time.Now()
	_, err = e.ops.RuntimeIdentity(ctx(t), e.target)
	require.NoError(t, err)
	require.Less(t, time.Since(start), 200*time.Millisecond)
}

// describeAfterPush holds DescribeInstances until SendSSHPublicKey has been
// called: a dial that makes the two calls one after the other never gets
// its answer.
type describeAfterPush struct {
	eic.EC2API
	pushed <-chan struct{}
}

func (d describeAfterPush) DescribeInstances(ctx context.Context, in *ec2.DescribeInstancesInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	select {
	case <-d.pushed:
	case <-time.After(5 * time.Second):
		return nil, errors.New("DescribeInstances was not overlapped with SendSSHPublicKey")
	}
	return d.EC2API.DescribeInstances(ctx, in, opts...)
}

type pushSignal struct {
	eic.InstanceConnectAPI
	once   *sync.Once
	pushed chan struct{}
}

func (p pushSignal) SendSSHPublicKey(ctx context.Context, in *ec2instanceconnect.SendSSHPublicKeyInput, opts ...func(*ec2instanceconnect.Options)) (*ec2instanceconnect.SendSSHPublicKeyOutput, error) {
	p.once.Do(func() { close(p.pushed) })
	return p.InstanceConnectAPI.SendSSHPublicKey(ctx, in, opts...)
}

// With the availability zone in the workspace row, the instance look-up and
// the key push do not depend on each other: a dial makes them together (one
// AWS round trip). A failed look-up still decides the error.
func TestDialOverlapsLookUpAndKeyPush(t *testing.T) {
	pushed := make(chan struct{})
	e := newEnv(t, eic.Direct, func(c *eic.Config) {
		c.EC2 = describeAfterPush{EC2API: c.EC2, pushed: pushed}
		c.InstanceConnect = pushSignal{InstanceConnectAPI: c.InstanceConnect, once: &sync.Once{}, pushed: pushed}
	})
	target := e.target
	target.AvailabilityZone = e.box.AvailabilityZone // as the workspace row holds it
	require.NotEmpty(t, target.AvailabilityZone)
	_, err := e.ops.ReadManifest(ctx(t), target, "github-tools")
	require.NoError(t, err)
	require.Equal(t, 1, e.aws.KeyPushes(e.box.InstanceID))

	unknown := target
	unknown.InstanceID = "i-0000000000000dead"
	_, err = e.ops.ReadManifest(ctx(t), unknown, "github-tools")
	var ue *eic.UnknownInstanceError
	require.ErrorAs(t, err, &ue, "the look-up's error, not the push's")
}

// fourBoxes is e's box and three more like it, each box's target, and the
// connections open on each, in that order.
func (e *env) fourBoxes(t *testing.T) (boxes []*fleet.Box, target func(*fleet.Box) reconcile.Box, open func() []int) {
	t.Helper()
	boxes = []*fleet.Box{e.box}
	for range 3 {
		b, err := e.fleet.AddBox(fleet.BoxSpec{BootInstalled: map[string][]byte{
			"github-tools": packPlugin(t, "github-tools", "1.2.0", map[string]string{"bin/gh": "#!/bin/sh\n"}),
		}})
		require.NoError(t, err)
		boxes = append(boxes, b)
	}
	target = func(b *fleet.Box) reconcile.Box {
		return reconcile.Box{InstanceID: b.InstanceID, OSUser: e.fleet.User(), HostKey: b.HostKey, PluginRoot: b.PluginRoot}
	}
	open = func() []int {
		var n []int
		for _, b := range boxes {
			n = append(n, b.OpenConnections())
		}
		return n
	}
	return boxes, target, open
}

// A sweep touches every box of the fleet once: the connections it leaves
// idle must not pile up for the idle timeout. Past MaxIdle, the connection
// idle longest is closed at once; the ones used last stay.
func TestIdleConnectionsBeyondMaxIdleAreClosed(t *testing.T) {
	e := newEnv(t, eic.Direct, func(c *eic.Config) { c.MaxIdle = 2 })
	boxes, target, open := e.fourBoxes(t)
	for _, b := range boxes {
		_, err := e.ops.ReadManifest(ctx(t), target(b), "github-tools")
		require.NoError(t, err)
	}
	var last []int
	require.Eventually(t, func() bool { last = open(); return slices.Equal(last, []int{0, 0, 1, 1}) }, 5*time.Second, 10*time.Millisecond,
		"the two used first are closed, the two used last stay open")
	require.Equal(t, []int{0, 0, 1, 1}, last)
	_, err := e.ops.ReadManifest(ctx(t), target(boxes[3]), "github-tools")
	require.NoError(t, err)
	require.Equal(t, 1, boxes[3].Logins(), "a connection kept is reused")
	require.Equal(t, int64(2), e.access.Stats().Open, "connections the cache holds")
}

// A connection in use is never one of those closed past MaxIdle, however
// many others go idle meanwhile; once released, it is the one kept.
func TestConnectionInUseOutlivesMaxIdle(t *testing.T) {
	e := newEnv(t, eic.Direct, func(c *eic.Config) { c.MaxIdle = 1 })
	boxes, target, open := e.fourBoxes(t)
	type ran struct {
		out []byte
		err error
	}
	long := make(chan ran, 1)
	go func() {
		out, _, err := e.access.Run(ctx(t), target(boxes[0]), "sleep 2; echo done", nil, 1<<10)
		long <- ran{out, err}
	}()
	require.Eventually(t, func() bool { return boxes[0].Commands() == 1 }, 10*time.Second, 10*time.Millisecond, "the long command started")
	for _, b := range boxes[1:] {
		_, err := e.ops.ReadManifest(ctx(t), target(b), "github-tools")
		require.NoError(t, err)
	}
	r := <-long
	require.NoError(t, r.err, "the connection in use was not closed under it")
	require.Equal(t, "done\n", string(r.out))
	var last []int
	require.Eventually(t, func() bool { last = open(); return slices.Equal(last, []int{1, 0, 0, 0}) }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, []int{1, 0, 0, 0}, last, "the one released last is kept")
	require.Equal(t, 1, boxes[0].Logins())
}

// A dial that fails is not an idle connection: it never takes the place of
// a healthy one kept under MaxIdle.
func TestFailedDialDoesNotCloseAnIdleConnection(t *testing.T) {
	e := newEnv(t, eic.Direct, func(c *eic.Config) { c.MaxIdle = 1 })
	_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	unknown := e.target
	for i := range 3 {
		unknown.InstanceID = fmt.Sprintf("i-0deadbeefdead%04d", i)
		_, err = e.ops.ReadManifest(ctx(t), unknown, "github-tools")
		var ue *eic.UnknownInstanceError
		require.ErrorAs(t, err, &ue)
	}
	time.Sleep(200 * time.Millisecond) // a close would reach the box by now
	require.Equal(t, 1, e.box.OpenConnections(), "the healthy idle connection is kept")
	_, err = e.ops.ReadManifest(ctx(t), e.target, "github-tools")
	require.NoError(t, err)
	require.Equal(t, 1, e.box.Logins())
}

// heldLookUp holds the first DescribeInstances of its instance (of any,
// if instance is empty) until release is closed or its context ends, and
// then fails it; every other call goes through. entered is closed when the
// held call starts, failed when it has returned.
type heldLookUp struct {
	eic.EC2API
	instance        string
	release         <-chan struct{}
	entered, failed chan struct{}
	once            *sync.Once
}

func newHeldLookUp(api eic.EC2API, instance string, release <-chan struct{}) heldLookUp {
	return heldLookUp{EC2API: api, instance: instance, release: release,
		entered: make(chan struct{}), failed: make(chan struct{}), once: &sync.Once{}}
}

func (h heldLookUp) DescribeInstances(ctx context.Context, in *ec2.DescribeInstancesInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	held := false
	if h.instance == "" || slices.Contains(in.InstanceIds, h.instance) {
		h.once.Do(func() { held = true })
	}
	if !held {
		return h.EC2API.DescribeInstances(ctx, in, opts...)
	}
	close(h.entered)
	defer close(h.failed)
	select {
	case <-h.release:
		return nil, errors.New("look-up failed after its caller left")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// A dial that fails after every caller waiting on it has left is taken out
// of the pool at the next idle pass: the next caller for that box dials
// afresh instead of getting the old dial's error.
func TestFailedDialNobodyWaitsForIsNotReused(t *testing.T) {
	f := fleettest.New(t)
	var boxes []*fleet.Box
	for range 2 {
		b, err := f.AddBox(fleet.BoxSpec{BootInstalled: map[string][]byte{
			"github-tools": packPlugin(t, "github-tools", "1.2.0", map[string]string{"bin/gh": "#!/bin/sh\n"}),
		}})
		require.NoError(t, err)
		boxes = append(boxes, b)
	}
	healthy, flaky := boxes[0], boxes[1]
	fail := make(chan struct{})
	var lookUp heldLookUp
	e := newEnvOn(t, f, healthy, eic.Direct, func(c *eic.Config) {
		lookUp = newHeldLookUp(c.EC2, flaky.InstanceID, fail)
		c.EC2 = lookUp
	})
	flakyTarget := e.target
	flakyTarget.InstanceID, flakyTarget.HostKey, flakyTarget.PluginRoot = flaky.InstanceID, flaky.HostKey, flaky.PluginRoot

	left, cancel := context.WithTimeout(ctx(t), 200*time.Millisecond)
	defer cancel()
	_, _, err := e.access.Run(left, flakyTarget, "true", nil, 1<<10)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the only caller left while its dial was in progress")
	close(fail)
	<-lookUp.failed

	// Each healthy operation's release runs an idle pass; once one has run
	// after the failed dial ended, only the healthy connection is held.
	require.Eventually(t, func() bool {
		_, err := e.ops.ReadManifest(ctx(t), e.target, "github-tools")
		require.NoError(t, err)
		return e.access.Stats().Open == 1
	}, 5*time.Second, 20*time.Millisecond, "the failed dial is out of the pool")

	_, err = e.ops.ReadManifest(ctx(t), flakyTarget, "github-tools")
	require.NoError(t, err, "a new dial, not the old dial's error")
	require.Equal(t, 1, flaky.Logins())
	require.Equal(t, 1, healthy.Logins(), "the healthy connection was kept throughout")
}

// Close ends a dial in progress rather than waiting out its timeout (a
// worker shutting down would otherwise hang for it), whether the dial waits
// on AWS or on a box that took the TCP connection and went quiet, and no
// connection outlives it.
func TestCloseEndsADialInProgress(t *testing.T) {
	for _, stage := range []string{"look-up", "handshake"} {
		t.Run(stage, func(t *testing.T) {
			t.Parallel()
			var lookUp heldLookUp
			e := newEnv(t, eic.Direct, func(c *eic.Config) {
				if stage == "look-up" {
					lookUp = newHeldLookUp(c.EC2, "", nil) // held until the dial's context ends
					c.EC2 = lookUp
				}
				c.DialTimeout = time.Minute
			})
			if stage == "handshake" {
				e.box.Freeze(true)
				t.Cleanup(func() { e.box.Freeze(false) })
			}
			left, cancel := context.WithCancel(ctx(t))
			ran := make(chan error, 1)
			go func() { _, _, err := e.access.Run(left, e.target, "true", nil, 1<<10); ran <- err }()
			if stage == "handshake" {
				require.Eventually(t, func() bool { return e.box.OpenConnections() == 1 }, 10*time.Second, 10*time.Millisecond, "the TCP connection is up")
			} else {
				<-lookUp.entered
			}
			cancel()
			require.ErrorIs(t, <-ran, context.Canceled)

			closed := make(chan error, 1)
			go func() { closed <- e.access.Close() }()
			select {
			case err := <-closed:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("Close waited for the dial in progress")
			}
			require.Eventually(t, func() bool { return e.box.OpenConnections() == 0 }, 5*time.Second, 10*time.Millisecond)
			_, _, err := e.access.Run(ctx(t), e.target, "true", nil, 1<<10)
			require.Error(t, err, "closed access opens no new connection")
		})
	}
}
