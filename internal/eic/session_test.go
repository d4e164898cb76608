package eic_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
)

// A box whose sshd accepts the login but refuses every session: each failed
// connection is closed, not only dropped from the pool.
func TestRefusedSessionClosesTheConnection(t *testing.T) {
	f := fleettest.New(t)
	box, err := f.AddBox(fleet.BoxSpec{RefuseSessions: true})
	require.NoError(t, err)
	e := newEnvOn(t, f, box, eic.Direct, nil)
	_, err = e.ops.RuntimeIdentity(ctx(t), e.target)
	require.ErrorContains(t, err, "open session on "+box.InstanceID)
	require.Equal(t, int64(2), e.access.Stats().Handshakes, "one transparent redial")
	require.Eventually(t, func() bool { return box.OpenConnections() == 0 }, 5*time.Second, 10*time.Millisecond,
		"every refused connection is closed (%d still open)", box.OpenConnections())
}

// A box that keeps TCP up but stops answering SSH: the keepalive gives up
// after its timeout and the connection is closed and evicted, so that the
// next operation dials afresh instead of waiting on it for ever.
func TestSilentBoxIsEvictedWithinTheKeepaliveTimeout(t *testing.T) {
	e := newEnv(t, eic.Direct, func(c *eic.Config) { c.KeepAlive, c.KeepAliveTimeout = 300*time.Millisecond, 500*time.Millisecond })
	_, err := e.ops.RuntimeIdentity(ctx(t), e.target)
	require.NoError(t, err)
	require.Equal(t, 1, e.box.OpenConnections())
	e.box.Freeze(true)
	start := time.Now()
	require.Eventually(t, func() bool { return e.box.OpenConnections() == 0 }, 10*time.Second, 10*time.Millisecond,
		"the silent connection is still open")
	t.Logf("silent connection closed after %s (keepalive every 300ms, answer due in 500ms)", time.Since(start).Round(10*time.Millisecond))
	e.box.Freeze(false)
	_, err = e.ops.RuntimeIdentity(ctx(t), e.target)
	require.NoError(t, err)
	require.Equal(t, int64(2), e.access.Stats().Handshakes, "the next operation dialled afresh")
}

// In endpoint mode a failed tunnel dial names the endpoint and the cause,
// never the presigned URL: its query holds the credential, the session
// token and the signature, replayable for 60 s.
func TestEndpointDialFailureLeaksNoPresignedURL(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close()) // nothing listens there now
	e := newEnv(t, eic.Endpoint, func(c *eic.Config) { c.EndpointURL = "ws://127.0.0.1:" + strconv.Itoa(port) })
	_, err = e.ops.RuntimeIdentity(ctx(t), e.target)
	require.Error(t, err)
	t.Logf("error: %v", err)
	require.Contains(t, err.Error(), "open tunnel to "+e.box.InstanceID)
	for _, secret := range []string{"X-Amz-", "Signature", "Credential", "amz-security-token"} {
		require.NotContains(t, strings.ToLower(err.Error()), strings.ToLower(secret))
		require.NotContains(t, strings.ToLower(e.logs.String()), strings.ToLower(secret))
	}
}
