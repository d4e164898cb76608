// Package fleet runs simulated boxes for development and tests: each box is a
// real OpenSSH sshd on its own loopback address, registered as an instance on
// the fake AWS endpoint, that authorises logins the way EC2 Instance Connect
// boxes do (an AuthorizedKeysCommand asking for the keys pushed in the last
// 60 s). Each box has its own host key, plugin root and a simulated agent
// runtime whose restarts are counted and whose identity changes on restart.
package fleet

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.temporal.io/server/common/testing/freeport"
	"golang.org/x/crypto/ssh"

	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
)

// SSHD is the OpenSSH server binary (Debian package openssh-server).
const SSHD = "/usr/sbin/sshd"

// LoginUser is the unprivileged account boxes log in as when the fleet runs
// as root (CI). `make deps` creates it.
const LoginUser = "pluginbox"

// The runtime commands a worker configures to drive a simulated box's agent
// runtime. sshd sets RUNTIME_DIR for every session (SetEnv), so one command
// serves every box; on a real box these are systemd commands.
const (
	RestartCommand  = `"$RUNTIME_DIR/restart"`
	IdentityCommand = `cat "$RUNTIME_DIR/invocation-id"`
)

// keysCommand must be a root-owned binary: sshd refuses scripts under /tmp.
const keysCommand = "/usr/bin/curl"

// Fleet is a set of simulated boxes sharing one fake AWS endpoint.
type Fleet struct {
	AWS  *fakeaws.Server
	Port int // sshd port, the same on every box (each box has its own address)
	// innerPort is where sshd itself listens; Port is the box's link
	// (see SetLatency).
	innerPort int

	dir      string
	user     *user.User
	uid, gid int
	root     bool
	subnet   [2]byte

	mu      sync.Mutex
	boxes   map[string]*Box
	next    int
	watcher *watcher
}

// New prepares a fleet. It checks that sshd and, when running as root, the
// login user and privilege-separation directory are there.
func New(aws *fakeaws.Server) (*Fleet, error) {
	if _, err := os.Stat(SSHD); err != nil {
		return nil, fmt.Errorf("fleet needs %s (Debian package openssh-server; run `make deps`): %w", SSHD, err)
	}
	if _, err := os.Stat(keysCommand); err != nil {
		return nil, fmt.Errorf("fleet needs %s (Debian package curl; run `make deps`): %w", keysCommand, err)
	}
	f := &Fleet{AWS: aws, boxes: map[string]*Box{}, root: os.Geteuid() == 0}
	var err error
	if f.root {
		if f.user, err = user.Lookup(LoginUser); err != nil {
			return nil, fmt.Errorf("fleet runs as root and needs the login user %q (run `make deps`): %w", LoginUser, err)
		}
		// sshd's privilege separation chroots here; systemd would create it.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("create /run/sshd: %w", err)
		}
	} else if f.user, err = user.Current(); err != nil {
		return nil, fmt.Errorf("current user: %w", err)
	}
	f.uid, _ = strconv.Atoi(f.user.Uid)
	f.gid, _ = strconv.Atoi(f.user.Gid)

	if f.dir, err = os.MkdirTemp("", "fleet-"); err != nil {
		return nil, err
	}
	// The login user must be able to reach its box's directories.
	if err := os.Chmod(f.dir, 0o755); err != nil {
		return nil, err
	}
	// Boxes live on a random 127.x.y.0/24 so that fleets of parallel test
	// processes do not collide.
	for i := range f.subnet {
		n, _ := rand.Int(rand.Reader, big.NewInt(250))
		f.subnet[i] = byte(n.Int64() + 2)
	}
	f.Port = freeport.MustGetFreePort()
	f.innerPort = freeport.MustGetFreePort()
	if f.watcher, err = newWatcher(); err != nil {
		return nil, err
	}
	return f, nil
}

// WorkerEnv is the environment that points a worker process at this fleet:
// direct access on the fleet's SSH port, the simulated runtime's commands,
// and AWS's own variables aimed at the fake endpoint.
func (f *Fleet) WorkerEnv() []string {
	return []string{
		"EIC_MODE=direct", "SSH_PORT=" + strconv.Itoa(f.Port),
		"RESTART_COMMAND=" + RestartCommand, "IDENTITY_COMMAND=" + IdentityCommand,
		"AWS_REGION=" + f.AWS.Region, "AWS_EC2_METADATA_DISABLED=true",
		"AWS_ACCESS_KEY_ID=" + fakeaws.AccessKeyID, "AWS_SECRET_ACCESS_KEY=" + fakeaws.SecretAccessKey,
		"AWS_ENDPOINT_URL_EC2=" + f.AWS.URL(), "AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT=" + f.AWS.URL(),
	}
}

// User is the account that boxes accept logins for.
func (f *Fleet) User() string { return f.user.Username }

// Dir is where the boxes' files live.
func (f *Fleet) Dir() string { return f.dir }

// Close stops every box and removes the fleet's files.
func (f *Fleet) Close() error {
	f.mu.Lock()
	boxes := make([]*Box, 0, len(f.boxes))
	for _, b := range f.boxes {
		boxes = append(boxes, b)
	}
	f.mu.Unlock()
	for _, b := range boxes {
		b.StopSSHD()
		b.link.close()
	}
	f.watcher.close()
	return os.RemoveAll(f.dir)
}

// Box returns a box by instance id.
func (f *Fleet) Box(id string) *Box {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.boxes[id]
}

// BoxSpec describes a box to start.
type BoxSpec struct {
	InstanceID       string // default: generated
	AvailabilityZone string // default: <region>a
	// BootInstalled are plugin bundles (tar.gz, as the catalog packs them)
	// that the box's boot install has unpacked under the plugin root.
	BootInstalled map[string][]byte
	// RefuseSessions makes sshd accept logins but refuse every session
	// (MaxSessions 0), as a box whose sshd is at its session limit does.
	RefuseSessions bool
}

// Box is one simulated EC2 instance.
type Box struct {
	InstanceID       string
	AvailabilityZone string
	PrivateIP        string
	Port             int
	PluginRoot       string
	RuntimeDir       string
	// HostKey is the box's public host key in authorized_keys format.
	HostKey string

	fleet          *Fleet
	dir            string
	link           *linkProxy
	refuseSessions bool
	mu             sync.Mutex
	cmd            *exec.Cmd
	done           chan struct{}
	rebootDelay    time.Duration

	evMu    sync.Mutex
	events  []Event
	flushes int
	flushed int
}

// SetLatency delays everything between the box and its clients by d each
// way (the round trip costs 2d), for latency-bound benchmarks and for
// catching a transfer in the middle.
func (b *Box) SetLatency(d time.Duration) { b.link.delay.Store(int64(d)) }

// AddBox starts a box: writes its files, registers it with the fake AWS
// endpoint, starts its sshd and waits until it accepts connections.
func (f *Fleet) AddBox(spec BoxSpec) (*Box, error) {
	f.mu.Lock()
	f.next++
	n := f.next
	f.mu.Unlock()
	if n > 250*250 {
		return nil, errors.New("fleet is full")
	}
	if spec.InstanceID == "" {
		spec.InstanceID = fmt.Sprintf("i-0%04x%04x%08x", f.subnet[0], f.subnet[1], n)
	}
	if spec.AvailabilityZone == "" {
		spec.AvailabilityZone = f.AWS.Region + "a"
	}
	b := &Box{
		InstanceID:       spec.InstanceID,
		AvailabilityZone: spec.AvailabilityZone,
		PrivateIP:        fmt.Sprintf("127.%d.%d.%d", f.subnet[0], (int(f.subnet[1])+n/250)%256, n%250+1),
		Port:             f.Port,
		fleet:            f,
		dir:              filepath.Join(f.dir, spec.InstanceID),
		refuseSessions:   spec.RefuseSessions,
	}
	b.PluginRoot = filepath.Join(b.dir, "plugins")
	b.RuntimeDir = filepath.Join(b.dir, "runtime")
	if err := b.writeFiles(spec); err != nil {
		return nil, fmt.Errorf("box %s: %w", b.InstanceID, err)
	}
	// Watched from after the boot install: what booted is not a swap.
	if err := f.watcher.add(b); err != nil {
		return nil, fmt.Errorf("box %s: %w", b.InstanceID, err)
	}
	f.AWS.AddInstance(fakeaws.Instance{
		ID:               b.InstanceID,
		AvailabilityZone: b.AvailabilityZone,
		PrivateIP:        b.PrivateIP,
		OnReboot:         func() { _ = b.Reboot() },
	})
	link, err := startLinkProxy(b.Addr(), b.sshdAddr())
	if err != nil {
		return nil, fmt.Errorf("box %s link: %w", b.InstanceID, err)
	}
	b.link = link
	if err := b.StartSSHD(); err != nil {
		link.close()
		return nil, err
	}
	f.mu.Lock()
	f.boxes[b.InstanceID] = b
	f.mu.Unlock()
	return b, nil
}

const restartScript = `#!/bin/sh
# Simulated agent runtime restart: counts restarts and gives the runtime a new
# invocation id, as systemd does for a restarted unit.
set -eu
d=$(dirname "$0")
exec 9>"$d/lock"
flock 9
# A failing restart (fail-next > 0) exits with fail-code before touching
# anything; a reboot always restarts.
if [ -z "${REBOOT:-}" ] && [ -s "$d/fail-next" ] && [ "$(cat "$d/fail-next")" -gt 0 ]; then
  echo $(($(cat "$d/fail-next") - 1)) >"$d/fail-next"
  echo "simulated restart failure" >&2
  exit "$(cat "$d/fail-code" 2>/dev/null || echo 1)"
fi
: >"$d/restarting"
if [ -s "$d/restart-delay" ]; then sleep "$(cat "$d/restart-delay")"; fi
n=$(cat "$d/restarts")
echo $((n + 1)) >"$d/restarts.new" && mv "$d/restarts.new" "$d/restarts"
cat /proc/sys/kernel/random/uuid >"$d/invocation-id.new" && mv "$d/invocation-id.new" "$d/invocation-id"
rm -f "$d/restarting"
`

func (b *Box) writeFiles(spec BoxSpec) error {
	f := b.fleet
	for _, d := range []string{b.dir, b.PluginRoot, b.RuntimeDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.dir, "ssh_host_ed25519_key"), pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return err
	}
	b.HostKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))

	files := map[string]string{
		"restart":       restartScript,
		"restarts":      "0\n",
		"invocation-id": newIdentity() + "\n",
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if name == "restart" {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(b.RuntimeDir, name), []byte(content), mode); err != nil {
			return err
		}
	}
	for name, bundle := range spec.BootInstalled {
		dst := filepath.Join(b.PluginRoot, name)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		cmd := exec.Command("tar", "-xzf", "-", "-C", dst, "--no-same-owner")
		cmd.Stdin = bytes.NewReader(bundle)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("boot install %s: %v: %s", name, err, out)
		}
	}
	if f.root {
		for _, d := range []string{b.PluginRoot, b.RuntimeDir} {
			if err := chownR(d, f.uid, f.gid); err != nil {
				return err
			}
		}
	}
	return b.writeConfig()
}

func chownR(root string, uid, gid int) error {
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

func (b *Box) writeConfig() error {
	f := b.fleet
	keysUser := "nobody"
	if !f.root {
		keysUser = f.user.Username
	}
	cfg := strings.Join([]string{
		"ListenAddress " + b.sshdAddr(),
		"HostKey " + filepath.Join(b.dir, "ssh_host_ed25519_key"),
		"PidFile none",
		"AuthorizedKeysFile none",
		fmt.Sprintf("AuthorizedKeysCommand %s -sSf --max-time 5 %s%%u", keysCommand, f.AWS.KeysURL(b.InstanceID)),
		"AuthorizedKeysCommandUser " + keysUser,
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PermitRootLogin no",
		"AllowUsers " + f.user.Username,
		"X11Forwarding no",
		"AllowTcpForwarding no",
		"SetEnv RUNTIME_DIR=" + b.RuntimeDir,
		"MaxStartups 200:30:400",
		maxSessions(b.refuseSessions),
		"LogLevel VERBOSE", // VERBOSE logs each session's start
		"",
	}, "\n")
	return os.WriteFile(filepath.Join(b.dir, "sshd_config"), []byte(cfg), 0o644)
}

func maxSessions(refuse bool) string {
	if refuse {
		return "MaxSessions 0"
	}
	return "MaxSessions 10"
}

func newIdentity() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	return fmt.Sprintf("%x", u)
}

// StartSSHD starts the box's sshd and waits until it accepts connections.
func (b *Box) StartSSHD() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		return nil
	}
	cmd := exec.Command(SSHD, "-D", "-e", "-f", filepath.Join(b.dir, "sshd_config"))
	// A file, not a pipe: sshd's session processes inherit it, and Wait
	// would otherwise wait for the last of them.
	logf, err := os.OpenFile(b.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sshd for %s: %w", b.InstanceID, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	addr := b.sshdAddr()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			return fmt.Errorf("sshd for %s exited: %s", b.InstanceID, b.readLog())
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return fmt.Errorf("sshd for %s not listening on %s after 10s: %s", b.InstanceID, addr, b.readLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.cmd, b.done = cmd, done
	return nil
}

// StopSSHD kills the box's sshd and every session it serves (a box outage).
func (b *Box) StopSSHD() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	// sshd's per-connection processes start sessions of their own: kill the
	// whole tree so that open connections drop as on a real outage.
	killTree(b.cmd.Process.Pid)
	<-b.done
	b.cmd = nil
}

// SSHDPid is the pid of the box's sshd (0 when it is stopped): every
// session and command on the box descends from it, so its reaped children's
// CPU time is the box's own work.
func (b *Box) SSHDPid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return 0
	}
	return b.cmd.Process.Pid
}

// Reboot simulates an instance reboot: sshd goes away, the runtime restarts
// (counted, new identity), sshd comes back.
func (b *Box) Reboot() error {
	b.mu.Lock()
	delay := b.rebootDelay
	b.mu.Unlock()
	// The OS takes a while to go down: until then the box answers with its
	// old identity.
	time.Sleep(delay)
	b.StopSSHD()
	time.Sleep(200 * time.Millisecond)
	cmd := exec.Command(filepath.Join(b.RuntimeDir, "restart"))
	cmd.Env = append(os.Environ(), "REBOOT=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("reboot %s: %v: %s", b.InstanceID, err, out)
	}
	return b.StartSSHD()
}

// SetRestartDelay makes the runtime take d to restart (a slow unit).
func (b *Box) SetRestartDelay(d time.Duration) error {
	return os.WriteFile(filepath.Join(b.RuntimeDir, "restart-delay"), []byte(fmt.Sprintf("%.3f\n", d.Seconds())), 0o644)
}

// SetRebootDelay makes a reboot start d after it was asked for: the box
// keeps running, and answering, with its old identity until then.
func (b *Box) SetRebootDelay(d time.Duration) {
	b.mu.Lock()
	b.rebootDelay = d
	b.mu.Unlock()
}

// FailRestarts makes the next n runtime restarts fail with exit code code
// before they touch anything (a refused sudo, a missing unit, ...).
func (b *Box) FailRestarts(n, code int) error {
	for name, v := range map[string]int{"fail-code": code, "fail-next": n} {
		p := filepath.Join(b.RuntimeDir, name)
		if err := os.WriteFile(p, []byte(strconv.Itoa(v)+"\n"), 0o644); err != nil {
			return err
		}
		// The restart runs as the box's login user and counts down fail-next.
		if b.fleet.root {
			if err := os.Chown(p, b.fleet.uid, b.fleet.gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// Freeze makes the box's network path hold every byte, in both directions,
// while keeping its TCP connections up (a box that stops answering without
// closing anything); Freeze(false) lets the held bytes through.
func (b *Box) Freeze(on bool) { b.link.frozen.Store(on) }

// OpenConnections is how many client connections the box's network path
// holds open right now.
func (b *Box) OpenConnections() int { return int(b.link.open.Load()) }

// Restarting reports whether the runtime is restarting right now.
func (b *Box) Restarting() bool {
	_, err := os.Stat(filepath.Join(b.RuntimeDir, "restarting"))
	return err == nil
}

// Restarts is how many times the box's runtime has restarted.
func (b *Box) Restarts() int {
	data, err := os.ReadFile(filepath.Join(b.RuntimeDir, "restarts"))
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return -1
	}
	return n
}

// Identity is the runtime's current invocation id.
func (b *Box) Identity() string {
	data, _ := os.ReadFile(filepath.Join(b.RuntimeDir, "invocation-id"))
	return strings.TrimSpace(string(data))
}

// Logins counts the SSH logins (completed handshakes) sshd accepted, across
// restarts of this box's sshd.
func (b *Box) Logins() int {
	return strings.Count(b.SSHDLog(), "Accepted publickey for ")
}

// Commands counts the remote commands (one SSH session each) sshd started,
// across restarts of this box's sshd.
func (b *Box) Commands() int {
	return strings.Count(b.SSHDLog(), "Starting session: command ")
}

// SSHDLog is everything this box's sshd processes have logged.
func (b *Box) SSHDLog() string { return b.readLog() }

func (b *Box) logPath() string { return filepath.Join(b.dir, "sshd.log") }

func (b *Box) readLog() string {
	data, _ := os.ReadFile(b.logPath())
	return string(data)
}

// killTree SIGKILLs pid and all its descendants.
func killTree(pid int) {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
		fields := strings.Fields(rest)
		if len(fields) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	var walk func(int)
	walk = func(p int) {
		_ = syscall.Kill(p, syscall.SIGSTOP)
		for _, c := range children[p] {
			walk(c)
		}
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	walk(pid)
}

// Addr is the box's SSH address, as clients reach it.
func (b *Box) Addr() string { return net.JoinHostPort(b.PrivateIP, strconv.Itoa(b.Port)) }

func (b *Box) sshdAddr() string {
	return net.JoinHostPort(b.PrivateIP, strconv.Itoa(b.fleet.innerPort))
}

// ManifestPath is where a plugin's manifest lives on the box.
func (b *Box) ManifestPath(name string) string {
	return filepath.Join(b.PluginRoot, name, "plugin.yaml")
}
