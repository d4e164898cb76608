// Package eic reaches boxes the way EC2 Instance Connect does: look the
// instance up with EC2 DescribeInstances, push a fresh in-memory ed25519 key
// with SendSSHPublicKey (valid 60 s), then open SSH, either directly to the
// private address or through an EC2 Instance Connect Endpoint tunnel. Host
// keys are verified (pinned, or trusted on first use and pinned from then on).
//
// One SSH connection per box is kept per process, shared by concurrent
// callers and closed when idle, so reconciling N plugins on a box costs one
// key push and one handshake. On top of it sit Run, for one remote command,
// and the EC2 calls (reboot, instance state); what the reconciler runs on a
// box is in internal/onbox.
package eic

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
)

// Mode is how the worker reaches a box's sshd.
type Mode string

const (
	// Direct connects to the instance's private address (workers in the VPC).
	Direct Mode = "direct"
	// Endpoint connects through an EC2 Instance Connect Endpoint tunnel.
	Endpoint Mode = "endpoint"
)

// EC2API is the part of the EC2 client box access uses.
type EC2API interface {
	DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	RebootInstances(context.Context, *ec2.RebootInstancesInput, ...func(*ec2.Options)) (*ec2.RebootInstancesOutput, error)
}

// InstanceConnectAPI is the part of the EC2 Instance Connect client box
// access uses.
type InstanceConnectAPI interface {
	SendSSHPublicKey(context.Context, *ec2instanceconnect.SendSSHPublicKeyInput, ...func(*ec2instanceconnect.Options)) (*ec2instanceconnect.SendSSHPublicKeyOutput, error)
}

// Config configures box access.
type Config struct {
	EC2             EC2API
	InstanceConnect InstanceConnectAPI

	Mode Mode
	Port int // sshd port on the box; default 22

	// Endpoint mode: the EC2 Instance Connect Endpoint to tunnel through.
	EndpointID string
	// EndpointURL overrides the endpoint's websocket base URL (default
	// wss://<EndpointID>.ec2-instance-connect-endpoint.<region>.amazonaws.com).
	EndpointURL string
	// Credentials and Region sign the tunnel URL (SigV4, presigned).
	Credentials aws.CredentialsProvider
	Region      string

	// RecordHostKey is called on trust-on-first-use with the key a box
	// presented (authorized_keys format). It must store it and return an error
	// if a different key is already stored, which fails the connection.
	RecordHostKey func(ctx context.Context, instanceID, hostKey string) error

	// IdleTimeout closes a connection unused this long; default 2 min, so
	// that a loaded worker whose deliveries come a while after the probes
	// still reuses the box's connection (measured: at 30 s, a fresh fleet
	// of 200 boxes cost 2 key pushes per box).
	IdleTimeout time.Duration
	// MaxIdle bounds the connections kept open with nobody using them:
	// past it, the one idle longest is closed at once, so a sweep over the
	// whole fleet holds at most MaxIdle idle connections plus the ones in
	// use, not every box it touched in the last IdleTimeout. Default
	// DefaultMaxIdle.
	MaxIdle   int
	KeepAlive time.Duration // default 10 s
	// KeepAliveTimeout is how long a keepalive may go unanswered before
	// the connection counts as dead; default 15 s.
	KeepAliveTimeout time.Duration
	// MaxSessions bounds concurrent sessions on one connection; sshd's
	// default MaxSessions is 10. Default 8.
	MaxSessions int
	DialTimeout time.Duration // default 20 s

	// DialPerOperation opens a new connection, with a new key push, for
	// every operation: the naive access path, kept only for the benchmark
	// to measure against. The worker never sets it.
	DialPerOperation bool

	Logger *slog.Logger
}

// DefaultMaxIdle is how many idle connections a worker keeps by default.
const DefaultMaxIdle = 256

func (c *Config) setDefaults() error {
	if c.EC2 == nil || c.InstanceConnect == nil {
		return errors.New("eic config: EC2 and InstanceConnect clients are required")
	}
	switch c.Mode {
	case "":
		c.Mode = Direct
	case Direct:
	case Endpoint:
		if c.EndpointID == "" && c.EndpointURL == "" {
			return errors.New("eic config: endpoint mode needs an endpoint id")
		}
		if c.Credentials == nil {
			return errors.New("eic config: endpoint mode needs credentials to sign the tunnel")
		}
	default:
		return fmt.Errorf("eic config: unknown mode %q (want direct or endpoint)", c.Mode)
	}
	if c.Port == 0 {
		c.Port = 22
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 2 * time.Minute
	}
	if c.MaxIdle == 0 {
		c.MaxIdle = DefaultMaxIdle
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 10 * time.Second
	}
	if c.KeepAliveTimeout == 0 {
		c.KeepAliveTimeout = 15 * time.Second
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = 8
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 20 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Errors a caller must tell apart: the permanent ones are worth failing a
// workflow step for without retrying.

// HostKeyMismatchError: the box presented a host key other than the pinned
// one. Permanent and a security event.
type HostKeyMismatchError struct {
	InstanceID string
	Want, Got  string // SHA256 fingerprints
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("host key mismatch on %s: pinned %s, presented %s", e.InstanceID, e.Want, e.Got)
}

// InstanceStateError: the instance is not running (stopped, terminated, …).
// Permanent for a reconcile.
type InstanceStateError struct {
	InstanceID, State string
}

func (e *InstanceStateError) Error() string {
	return fmt.Sprintf("instance %s is %s, not running", e.InstanceID, e.State)
}

// UnknownInstanceError: EC2 does not know the instance. Permanent.
type UnknownInstanceError struct {
	InstanceID string
}

func (e *UnknownInstanceError) Error() string {
	return fmt.Sprintf("instance %s does not exist", e.InstanceID)
}

// Stats counts the expensive steps of box access.
type Stats struct {
	KeyPushes  int64
	Handshakes int64
	Commands   int64 // remote commands run (one SSH session each)
	Open       int64 // connections held now, in use or idle
}
