// Package fakeaws is a local stand-in for the parts of AWS the reconciler
// uses, speaking their real wire protocols so that the real AWS SDK clients
// can talk to it:
//
//   - EC2 Query (DescribeInstances, RebootInstances) with AWS-shaped XML errors;
//   - EC2 Instance Connect, awsJson1.1 (SendSSHPublicKey) with the documented
//     validation and a 60 s key lifetime;
//   - the EC2 Instance Connect Endpoint openTunnel websocket, SigV4
//     query-presigned, forwarding to the box's sshd.
//
// A private route serves the unexpired pushed keys of an (instance, user) to
// the simulated boxes' sshd AuthorizedKeysCommand, the way the real EIC agent
// on a box reads them from instance metadata. Faults (throttling, latency,
// instance states) are set on demand. It is for development and tests only.
package fakeaws

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// KeyLifetime is how long a key pushed with SendSSHPublicKey is honoured.
const KeyLifetime = 60 * time.Second

// Credentials the fake accepts for presigned tunnel URLs. The EC2 and EIC
// handlers do not check request signatures; the tunnel does, because its
// signature is what the client computes by itself.
const (
	AccessKeyID     = "AKIAFAKEFLEET0000001"
	SecretAccessKey = "fake-secret-access-key-for-the-simulated-fleet"
)

// Instance is one simulated EC2 instance.
type Instance struct {
	ID               string
	AvailabilityZone string
	PrivateIP        string
	// State is an EC2 instance state name: pending, running, stopping,
	// stopped, shutting-down, terminated.
	State string
	// OnReboot is called by RebootInstances (asynchronously, as EC2 does).
	OnReboot func()
}

type pushedKey struct {
	user    string
	key     string
	expires time.Time
}

type instance struct {
	Instance
	keys   []pushedKey
	pushes int
}

// Server is a running fake endpoint.
type Server struct {
	Region string

	ln  net.Listener
	srv *http.Server

	mu        sync.Mutex
	instances map[string]*instance
	offset    time.Duration // fake clock: added to the wall clock
	faults    Faults
	calls     map[string]int // per API action, including faulted calls
}

// Faults are injected failures and delays.
type Faults struct {
	// Latency is added to every API call (not to tunnel traffic).
	Latency time.Duration
	// ThrottleSendKeyNext makes the next N SendSSHPublicKey calls fail with
	// ThrottlingException.
	ThrottleSendKeyNext int
	// ThrottleSendKeyEvery throttles every Nth SendSSHPublicKey call (N >= 2).
	ThrottleSendKeyEvery int
}

// Start listens on 127.0.0.1 and serves until Close.
func Start(region string) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake aws listen: %w", err)
	}
	s := &Server{
		Region:    region,
		ln:        ln,
		instances: map[string]*instance{},
		calls:     map[string]int{},
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// URL is the base endpoint, for AWS_ENDPOINT_URL_* and the SDK's BaseEndpoint.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// TunnelURL is the base of the openTunnel websocket endpoint.
func (s *Server) TunnelURL() string { return "ws://" + s.ln.Addr().String() }

// SDKConfig is an AWS SDK configuration whose clients talk to this fake.
func (s *Server) SDKConfig() aws.Config {
	return aws.Config{
		Region:       s.Region,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKeyID, SecretAccessKey, ""),
		BaseEndpoint: aws.String(s.URL()),
	}
}

// KeysURL is the route an AuthorizedKeysCommand appends the user name to.
func (s *Server) KeysURL(instanceID string) string {
	return s.URL() + "/fleet/keys/" + instanceID + "/"
}

// Close stops the server and its tunnels.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		return s.srv.Close()
	}
	return nil
}

// AddInstance registers (or replaces) an instance.
func (s *Server) AddInstance(in Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.State == "" {
		in.State = "running"
	}
	s.instances[in.ID] = &instance{Instance: in}
}

// SetState changes an instance's state (e.g. "stopped").
func (s *Server) SetState(id, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.instances[id]; ok {
		in.State = state
	}
}

// SetFaults replaces the injected faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// Advance moves the fake clock forward; it only affects key expiry.
func (s *Server) Advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offset += d
}

// KeyPushes is the number of accepted SendSSHPublicKey calls for an instance.
func (s *Server) KeyPushes(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.instances[id]; ok {
		return in.pushes
	}
	return 0
}

// Calls is the number of calls made to an API action (e.g.
// "SendSSHPublicKey", "DescribeInstances", "OpenTunnel"), faulted ones included.
func (s *Server) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

func (s *Server) now() time.Time { return time.Now().Add(s.offset) }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/fleet/keys/"):
		s.serveKeys(w, r)
	case r.URL.Path == "/openTunnel":
		s.serveTunnel(w, r)
	case r.Header.Get("X-Amz-Target") != "":
		s.delay()
		s.serveInstanceConnect(w, r)
	case r.Method == http.MethodPost:
		s.delay()
		s.serveEC2(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) delay() {
	s.mu.Lock()
	d := s.faults.Latency
	s.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}

// serveKeys answers an sshd AuthorizedKeysCommand: the keys pushed for this
// instance and user that have not expired, one per line.
func (s *Server) serveKeys(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/fleet/keys/"), "/")
	if len(parts) != 2 {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	var keys []string
	if in, ok := s.instances[parts[0]]; ok {
		now := s.now()
		for _, k := range in.keys {
			if k.user == parts[1] && now.Before(k.expires) {
				keys = append(keys, k.key)
			}
		}
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	for _, k := range keys {
		fmt.Fprintln(w, k)
	}
}

func (s *Server) countCall(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[action]++
	return s.calls[action]
}

func (s *Server) lookup(id string) (Instance, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[id]
	if !ok {
		return Instance{}, false
	}
	return in.Instance, true
}

func (s *Server) sortedIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.instances))
	for id := range s.instances {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
