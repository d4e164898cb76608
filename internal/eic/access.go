package eic

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/aws/smithy-go"
	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// testKeyHook lets this package's tests see each generated private key, to
// prove it is never written anywhere. Always nil outside tests.
var testKeyHook func(ed25519.PrivateKey)

// Access runs operations on boxes, sharing one SSH connection per box.
type Access struct {
	cfg Config

	mu    sync.Mutex
	conns map[string]*conn
	// pinned remembers host keys trusted on first use in this process, so a
	// reconnect before the stored key reaches the caller's Box still
	// verifies against it.
	pinned map[string]ssh.PublicKey

	keyPushes  atomic.Int64
	handshakes atomic.Int64
	commands   atomic.Int64

	stop chan struct{}
	wg   sync.WaitGroup // the reaper and every shared dial with its watcher
	// dials is cancelled by Close: a dial in progress ends rather than
	// holding Close for its timeout.
	dials       context.Context
	cancelDials context.CancelFunc
}

// New creates box access. Close it to drop its connections.
func New(cfg Config) (*Access, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	a := &Access{cfg: cfg, conns: map[string]*conn{}, pinned: map[string]ssh.PublicKey{}, stop: make(chan struct{})}
	a.dials, a.cancelDials = context.WithCancel(context.Background())
	a.wg.Add(1)
	go a.reapIdle()
	return a, nil
}

// Close closes every connection.
func (a *Access) Close() error {
	a.mu.Lock()
	select {
	case <-a.stop:
		a.mu.Unlock()
		return nil
	default:
	}
	close(a.stop)
	a.cancelDials()
	a.mu.Unlock()
	a.wg.Wait()
	a.mu.Lock()
	conns := a.conns
	a.conns = map[string]*conn{}
	a.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	return nil
}

// Stats reports key pushes, SSH handshakes and remote commands so far.
func (a *Access) Stats() Stats {
	a.mu.Lock()
	open := int64(len(a.conns))
	a.mu.Unlock()
	return Stats{KeyPushes: a.keyPushes.Load(), Handshakes: a.handshakes.Load(), Commands: a.commands.Load(), Open: open}
}

// conn is one shared SSH connection to a box. ready is closed when the dial
// has finished; client and err are set before that and never change after.
type conn struct {
	key    string
	ready  chan struct{}
	client *ssh.Client
	err    error
	slots  chan struct{}

	mu       sync.Mutex
	users    int
	lastUsed time.Time
	broken   bool
	closed   sync.Once
}

func (c *conn) close() {
	<-c.ready
	c.closed.Do(func() {
		if c.client != nil {
			_ = c.client.Close()
		}
	})
}

// release ends one user's use of c; the last user of a broken connection
// closes it (a connection is never left open once out of the pool).
func (c *conn) release() (idle bool) {
	c.mu.Lock()
	c.users--
	c.lastUsed = time.Now()
	last := c.broken && c.users == 0
	idle = !c.broken && c.users == 0
	c.mu.Unlock()
	if last {
		c.close()
	}
	return idle
}

// markBroken takes c out of use and closes it if nobody uses it now;
// otherwise its last user closes it.
func (c *conn) markBroken() {
	c.mu.Lock()
	c.broken = true
	idle := c.users == 0
	c.mu.Unlock()
	if idle {
		go c.close() // close waits for a dial in progress
	}
}

// closedErr is the error for a dial asked of a closed Access, nil if open.
func (a *Access) closedErr(t reconcile.Box) error {
	select {
	case <-a.stop:
		return fmt.Errorf("connect to %s: box access is closed", t.InstanceID)
	default:
		return nil
	}
}

func connKey(t reconcile.Box) string { return t.Region + "/" + t.InstanceID + "/" + t.OSUser }

// acquire returns a connection to t, dialling one if none is usable, and a
// release function the caller must call when its session is done.
func (a *Access) acquire(ctx context.Context, t reconcile.Box) (*conn, func(), error) {
	if a.cfg.DialPerOperation {
		if err := a.closedErr(t); err != nil {
			return nil, nil, err
		}
		c := &conn{ready: make(chan struct{}), slots: make(chan struct{}, 1)}
		c.client, c.err = a.dial(ctx, t)
		close(c.ready)
		if c.err != nil {
			return nil, nil, c.err
		}
		return c, func() { _ = c.client.Close() }, nil
	}

	key := connKey(t)
	a.mu.Lock()
	c := a.conns[key]
	if c != nil {
		c.mu.Lock()
		broken := c.broken
		c.mu.Unlock()
		if broken {
			delete(a.conns, key)
			c = nil
		}
	}
	if c == nil {
		if err := a.closedErr(t); err != nil {
			a.mu.Unlock()
			return nil, nil, err
		}
		c = &conn{key: key, ready: make(chan struct{}), slots: make(chan struct{}, a.cfg.MaxSessions)}
		a.conns[key] = c
		// Counted under a.mu with stop checked, so Close's Wait never
		// meets an Add.
		a.wg.Add(1)
		go a.dialShared(t, c)
	}
	// Counted while a.mu is held, so the idle reaper never closes a
	// connection between lookup and use.
	c.mu.Lock()
	c.users++
	c.mu.Unlock()
	a.mu.Unlock()

	// A connection left idle may take the pool past MaxIdle.
	release := func() {
		if c.release() {
			a.closeIdle(time.Now())
		}
	}
	select {
	case <-c.ready:
	case <-ctx.Done():
		release()
		return nil, nil, ctx.Err()
	}
	if c.err != nil {
		// Out of the pool before the release, so it never counts as idle.
		a.evict(c)
		release()
		return nil, nil, c.err
	}
	return c, release, nil
}

// Warm makes sure a connection to t is open (or being opened), so that
// operations arriving meanwhile share it.
func (a *Access) Warm(ctx context.Context, t reconcile.Box) error {
	if a.cfg.DialPerOperation {
		return nil
	}
	_, release, err := a.acquire(ctx, t)
	if err == nil {
		release()
	}
	return err
}

// dialShared dials on behalf of every caller waiting on c. It is not bound
// to the first caller's context: a cancelled caller must not fail the others.
func (a *Access) dialShared(t reconcile.Box, c *conn) {
	defer a.wg.Done()
	ctx, cancel := context.WithTimeout(a.dials, a.cfg.DialTimeout)
	c.client, c.err = a.dial(ctx, t)
	cancel()
	close(c.ready)
	if c.err == nil {
		a.watch(c)
	}
}

// watch keeps a connection alive and evicts it when it dies.
func (a *Access) watch(c *conn) {
	dead := make(chan struct{})
	go func() { _ = c.client.Wait(); close(dead) }()
	tick := time.NewTicker(a.cfg.KeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-dead:
			a.evict(c)
			return
		case <-tick.C:
			// A box that keeps TCP up but stops answering would block the
			// request for ever: past its timeout the connection is dead,
			// and closing it fails (and so frees) whoever still waits on it.
			answered := make(chan error, 1)
			go func() {
				_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
				answered <- err
			}()
			var err error
			select {
			case err = <-answered:
			case <-time.After(a.cfg.KeepAliveTimeout):
				err = fmt.Errorf("no keepalive answer in %s", a.cfg.KeepAliveTimeout)
			case <-a.stop:
				return
			}
			if err != nil {
				a.cfg.Logger.Info("ssh connection dropped", "instance", c.key, "reason", err.Error())
				a.evict(c)
				c.close()
				return
			}
		}
	}
}

// evict removes c from the pool; the next caller dials afresh, with a new key.
func (a *Access) evict(c *conn) {
	c.markBroken()
	a.mu.Lock()
	if a.conns[c.key] == c {
		delete(a.conns, c.key)
	}
	a.mu.Unlock()
}

func (a *Access) reapIdle() {
	defer a.wg.Done()
	tick := time.NewTicker(a.cfg.IdleTimeout / 2)
	defer tick.Stop()
	for {
		select {
		case <-a.stop:
			return
		case now := <-tick.C:
			a.closeIdle(now)
		}
	}
}

// closeIdle takes out of the pool, and closes, every connection idle for
// IdleTimeout and, past MaxIdle idle ones, those idle longest. It decides
// with a.mu held, which acquire needs to count a new user, so a connection
// chosen here cannot gain one before it is out of the pool.
func (a *Access) closeIdle(now time.Time) {
	type idleConn struct {
		c    *conn
		used time.Time
	}
	var idle []idleConn
	var drop []*conn
	a.mu.Lock()
	for k, c := range a.conns {
		select {
		case <-c.ready:
		default:
			continue // still dialling
		}
		c.mu.Lock()
		switch {
		case c.users > 0 || c.broken:
		case c.err != nil:
			// A failed dial whose callers all left before it ended: out
			// at once, and never counted as idle.
			c.broken = true
			delete(a.conns, k)
			drop = append(drop, c)
		default:
			idle = append(idle, idleConn{c, c.lastUsed})
		}
		c.mu.Unlock()
	}
	slices.SortFunc(idle, func(x, y idleConn) int { return x.used.Compare(y.used) })
	for i, ic := range idle {
		if len(idle)-i <= a.cfg.MaxIdle && now.Sub(ic.used) < a.cfg.IdleTimeout {
			break
		}
		ic.c.mu.Lock()
		ic.c.broken = true
		ic.c.mu.Unlock()
		delete(a.conns, ic.c.key)
		drop = append(drop, ic.c)
	}
	a.mu.Unlock()
	// Not on the caller's path: an endpoint tunnel's close waits for the
	// peer, and the caller released a connection to another box.
	for _, c := range drop {
		go c.close()
	}
}

// session runs fn on a new SSH session of a shared connection. A failure to
// open the session (a dead connection: nothing ran on the box) evicts the
// connection and is retried once on a fresh one.
func (a *Access) session(ctx context.Context, t reconcile.Box, fn func(*ssh.Session) error) error {
	if err := t.Validate(); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		c, release, err := a.acquire(ctx, t)
		if err != nil {
			return err
		}
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			release()
			return ctx.Err()
		}
		s, err := c.client.NewSession()
		if err != nil {
			<-c.slots
			a.evict(c) // before the release: a dead connection never counts as idle
			release()
			if attempt == 0 && !a.cfg.DialPerOperation {
				continue
			}
			return fmt.Errorf("open session on %s: %w", t.InstanceID, err)
		}
		done := make(chan struct{})
		go func() {
			select {
			case <-ctx.Done():
				_ = s.Close()
			case <-done:
			}
		}()
		err = fn(s)
		close(done)
		_ = s.Close()
		<-c.slots
		release()
		// A cancelled caller gets its cancellation even when the command
		// ended on its own: the remote side saw a cut channel.
		if ctx.Err() != nil {
			if err != nil {
				return fmt.Errorf("%w (%v)", ctx.Err(), err)
			}
			return ctx.Err()
		}
		return err
	}
}

// dial looks the instance up, pushes a fresh key and opens SSH. When the
// workspace row holds the availability zone, the look-up and the push do
// not depend on each other and run together (one AWS round trip, not two);
// a failed look-up still decides the error (a key pushed to an instance
// that is gone expires unused in 60 s).
func (a *Access) dial(ctx context.Context, t reconcile.Box) (*ssh.Client, error) {
	// The key lives only in this function's memory: it is pushed, used for
	// one handshake and dropped. EIC honours it for 60 s.
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if testKeyHook != nil {
		testKeyHook(priv)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	authorizedKey := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	var ip string
	if t.AvailabilityZone != "" {
		pushed := make(chan error, 1)
		go func() { pushed <- a.pushKey(ctx, t, authorizedKey) }()
		ip, _, err = a.describe(ctx, t)
		if perr := <-pushed; err == nil {
			err = perr
		}
		if err != nil {
			return nil, err
		}
	} else {
		var az string
		if ip, az, err = a.describe(ctx, t); err != nil {
			return nil, err
		}
		t.AvailabilityZone = az
		if err := a.pushKey(ctx, t, authorizedKey); err != nil {
			return nil, err
		}
	}

	addr := net.JoinHostPort(ip, strconv.Itoa(a.cfg.Port))
	nc, err := a.transport(ctx, t, ip)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User:            t.OSUser,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: a.hostKeyCallback(ctx, t),
		Timeout:         a.cfg.DialTimeout,
	}
	if algs, err := pinnedAlgorithms(t.HostKey); err == nil && algs != nil {
		cfg.HostKeyAlgorithms = algs
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	// The handshake does not watch ctx: a deadline in the past ends it
	// when ctx ends (Close, or a box that took the connection and went
	// quiet).
	unwatch := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	cc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if !unwatch() && err == nil {
		// ctx ended as the handshake finished: the past deadline may be
		// set on the new connection, so it is not handed out.
		_ = cc.Close()
		return nil, fmt.Errorf("ssh handshake with %s (%s): %w", t.InstanceID, addr, ctx.Err())
	}
	if err != nil {
		nc.Close()
		var mismatch *HostKeyMismatchError
		if errors.As(err, &mismatch) {
			return nil, mismatch
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("ssh handshake with %s (%s): %w", t.InstanceID, addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	a.handshakes.Add(1)
	a.cfg.Logger.Debug("ssh connected", "instance", t.InstanceID, "mode", a.cfg.Mode)
	return ssh.NewClient(cc, chans, reqs), nil
}

func (a *Access) regionOpt(t reconcile.Box) func(*ec2.Options) {
	return func(o *ec2.Options) {
		if t.Region != "" {
			o.Region = t.Region
		}
	}
}

// describe returns the instance's private address and availability zone,
// failing permanently if it does not exist or is not running.
func (a *Access) describe(ctx context.Context, t reconcile.Box) (ip, az string, err error) {
	out, err := a.cfg.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{t.InstanceID}}, a.regionOpt(t))
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) && ae.ErrorCode() == "InvalidInstanceID.NotFound" {
			return "", "", &UnknownInstanceError{InstanceID: t.InstanceID}
		}
		return "", "", fmt.Errorf("describe instance %s: %w", t.InstanceID, err)
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if aws.ToString(in.InstanceId) != t.InstanceID {
				continue
			}
			state := ""
			if in.State != nil {
				state = string(in.State.Name)
			}
			if state != "running" {
				return "", "", &InstanceStateError{InstanceID: t.InstanceID, State: state}
			}
			if in.Placement != nil {
				az = aws.ToString(in.Placement.AvailabilityZone)
			}
			ip = aws.ToString(in.PrivateIpAddress)
			if ip == "" {
				return "", "", fmt.Errorf("instance %s has no private address", t.InstanceID)
			}
			return ip, az, nil
		}
	}
	return "", "", &UnknownInstanceError{InstanceID: t.InstanceID}
}

func (a *Access) pushKey(ctx context.Context, t reconcile.Box, authorizedKey string) error {
	in := &ec2instanceconnect.SendSSHPublicKeyInput{
		InstanceId:     aws.String(t.InstanceID),
		InstanceOSUser: aws.String(t.OSUser),
		SSHPublicKey:   aws.String(authorizedKey),
	}
	if t.AvailabilityZone != "" {
		in.AvailabilityZone = aws.String(t.AvailabilityZone)
	}
	_, err := a.cfg.InstanceConnect.SendSSHPublicKey(ctx, in, func(o *ec2instanceconnect.Options) {
		if t.Region != "" {
			o.Region = t.Region
		}
	})
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			switch ae.ErrorCode() {
			case "EC2InstanceNotFoundException":
				return &UnknownInstanceError{InstanceID: t.InstanceID}
			case "EC2InstanceStateInvalidException":
				return &InstanceStateError{InstanceID: t.InstanceID, State: "not running (EC2InstanceStateInvalidException)"}
			}
		}
		return fmt.Errorf("send ssh public key to %s: %w", t.InstanceID, err)
	}
	a.keyPushes.Add(1)
	return nil
}

// transport opens the byte stream to the box's sshd.
func (a *Access) transport(ctx context.Context, t reconcile.Box, ip string) (net.Conn, error) {
	if a.cfg.Mode == Direct {
		d := net.Dialer{Timeout: a.cfg.DialTimeout}
		nc, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(a.cfg.Port)))
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", t.InstanceID, err)
		}
		return nc, nil
	}
	u, err := a.tunnelURL(ctx, t, ip)
	if err != nil {
		return nil, err
	}
	ws, resp, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		status := ""
		if resp != nil {
			status = " (" + resp.Status + ")"
		}
		return nil, fmt.Errorf("open tunnel to %s through %s%s: %w", t.InstanceID, a.endpointHost(), status, withoutURL(err, u))
	}
	// The tunnel outlives this dial's context; it ends when the SSH
	// connection closes it.
	return websocket.NetConn(context.Background(), ws, websocket.MessageBinary), nil
}

// withoutURL keeps a tunnel dial error's cause but not the presigned URL
// that net/http puts in its *url.Error: the URL's query is a credential,
// a session token and a signature, good for 60 s, and errors end up in
// activity failures, workflow history and logs.
func withoutURL(err error, presigned string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	msg := err.Error()
	if _, query, ok := strings.Cut(presigned, "?"); ok {
		msg = strings.ReplaceAll(msg, query, "[presigned query removed]")
	}
	return errors.New(msg)
}

// endpointHost names the endpoint in errors, without the query.
func (a *Access) endpointHost() string {
	if a.cfg.EndpointURL != "" {
		if u, err := url.Parse(a.cfg.EndpointURL); err == nil {
			return u.Host
		}
	}
	return a.cfg.EndpointID
}

const emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// tunnelURL builds the SigV4 query-presigned openTunnel URL.
func (a *Access) tunnelURL(ctx context.Context, t reconcile.Box, ip string) (string, error) {
	region := t.Region
	if region == "" {
		region = a.cfg.Region
	}
	base := a.cfg.EndpointURL
	if base == "" {
		base = fmt.Sprintf("wss://%s.ec2-instance-connect-endpoint.%s.amazonaws.com", a.cfg.EndpointID, region)
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("endpoint url: %w", err)
	}
	wsScheme := u.Scheme
	switch u.Scheme {
	case "wss":
		u.Scheme = "https"
	case "ws":
		u.Scheme = "http"
	default:
		return "", fmt.Errorf("endpoint url %q must be ws:// or wss://", base)
	}
	u.Path = "/openTunnel"
	q := url.Values{}
	q.Set("instanceConnectEndpointId", a.cfg.EndpointID)
	q.Set("maxTunnelDuration", "3600")
	q.Set("privateIpAddress", ip)
	q.Set("remotePort", strconv.Itoa(a.cfg.Port))
	q.Set("X-Amz-Expires", "60")
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	creds, err := a.cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return "", fmt.Errorf("credentials for tunnel: %w", err)
	}
	signed, _, err := v4.NewSigner().PresignHTTP(ctx, creds, req, emptyPayloadHash, "ec2-instance-connect", region, time.Now().UTC())
	if err != nil {
		return "", fmt.Errorf("presign tunnel: %w", err)
	}
	su, err := url.Parse(signed)
	if err != nil {
		return "", err
	}
	su.Scheme = wsScheme
	return su.String(), nil
}

// hostKeyCallback verifies the box's host key: against the pinned key when
// there is one, else trust on first use through RecordHostKey.
func (a *Access) hostKeyCallback(ctx context.Context, t reconcile.Box) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, got ssh.PublicKey) error {
		want, err := a.pinnedKey(t)
		if err != nil {
			return err
		}
		if want != nil {
			if string(want.Marshal()) != string(got.Marshal()) {
				return &HostKeyMismatchError{InstanceID: t.InstanceID, Want: ssh.FingerprintSHA256(want), Got: ssh.FingerprintSHA256(got)}
			}
			return nil
		}
		if a.cfg.RecordHostKey == nil {
			return fmt.Errorf("no host key pinned for %s and trust on first use is not configured", t.InstanceID)
		}
		authorized := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(got)))
		if err := a.cfg.RecordHostKey(ctx, t.InstanceID, authorized); err != nil {
			return fmt.Errorf("record host key of %s: %w", t.InstanceID, err)
		}
		a.mu.Lock()
		a.pinned[t.InstanceID] = got
		a.mu.Unlock()
		a.cfg.Logger.Info("host key trusted on first use", "instance", t.InstanceID, "fingerprint", ssh.FingerprintSHA256(got))
		return nil
	}
}

func (a *Access) pinnedKey(t reconcile.Box) (ssh.PublicKey, error) {
	if t.HostKey != "" {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(t.HostKey))
		if err != nil {
			return nil, fmt.Errorf("pinned host key of %s does not parse: %w", t.InstanceID, err)
		}
		return k, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pinned[t.InstanceID], nil
}

// pinnedAlgorithms asks the server for the pinned key's type, so that a box
// with several host keys presents the one we know.
func pinnedAlgorithms(hostKey string) ([]string, error) {
	if hostKey == "" {
		return nil, nil
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		return nil, err
	}
	if k.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}, nil
	}
	return []string{k.Type()}, nil
}
