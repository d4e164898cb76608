package fakeaws

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/coder/websocket"
)

// TunnelService is the SigV4 signing name of the openTunnel endpoint.
const TunnelService = "ec2-instance-connect"

// emptyPayloadHash is the SHA-256 of an empty body, which a presigned GET signs.
const emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// serveTunnel is EC2 Instance Connect Endpoint's openTunnel: a websocket whose
// binary frames carry one TCP stream to privateIpAddress:remotePort.
func (s *Server) serveTunnel(w http.ResponseWriter, r *http.Request) {
	s.countCall("OpenTunnel")
	if err := s.verifyPresigned(r); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	q := r.URL.Query()
	ip := q.Get("privateIpAddress")
	port, err := strconv.Atoi(q.Get("remotePort"))
	if err != nil || port < 1 || port > 65535 || q.Get("instanceConnectEndpointId") == "" {
		http.Error(w, "instanceConnectEndpointId, remotePort and privateIpAddress are required", http.StatusBadRequest)
		return
	}
	if !s.reachable(ip) {
		http.Error(w, fmt.Sprintf("no running instance has private address %s", ip), http.StatusNotFound)
		return
	}
	backend, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		http.Error(w, "connect to instance: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer backend.Close()

	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	front := websocket.NetConn(ctx, c, websocket.MessageBinary)
	defer front.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(backend, front); done <- struct{}{} }()
	go func() { _, _ = io.Copy(front, backend); done <- struct{}{} }()
	<-done
}

func (s *Server) reachable(ip string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, in := range s.instances {
		if in.PrivateIP == ip && in.State == "running" {
			return true
		}
	}
	return false
}

// verifyPresigned checks the SigV4 query signature the way the service would:
// algorithm, credential scope (this region, service ec2-instance-connect),
// expiry of at most 60 s, and the signature itself, recomputed with the
// fake's known secret.
func (s *Server) verifyPresigned(r *http.Request) error {
	q := r.URL.Query()
	if q.Get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" {
		return fmt.Errorf("missing or unsupported X-Amz-Algorithm")
	}
	scope := strings.Split(q.Get("X-Amz-Credential"), "/")
	if len(scope) != 5 || scope[0] != AccessKeyID || scope[2] != s.Region || scope[3] != TunnelService || scope[4] != "aws4_request" {
		return fmt.Errorf("credential scope %q is not for %s in %s", q.Get("X-Amz-Credential"), TunnelService, s.Region)
	}
	signedAt, err := time.Parse("20060102T150405Z", q.Get("X-Amz-Date"))
	if err != nil {
		return fmt.Errorf("bad X-Amz-Date")
	}
	expires, err := strconv.Atoi(q.Get("X-Amz-Expires"))
	if err != nil || expires < 1 || expires > 60 {
		return fmt.Errorf("X-Amz-Expires must be 1..60")
	}
	if time.Now().After(signedAt.Add(time.Duration(expires) * time.Second)) {
		return fmt.Errorf("presigned URL expired")
	}
	got := q.Get("X-Amz-Signature")
	q.Del("X-Amz-Signature")
	u := url.URL{Scheme: "https", Host: r.Host, Path: r.URL.Path, RawQuery: q.Encode()}
	req, err := http.NewRequest(http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	signed, _, err := v4.NewSigner().PresignHTTP(r.Context(),
		aws.Credentials{AccessKeyID: AccessKeyID, SecretAccessKey: SecretAccessKey},
		req, emptyPayloadHash, TunnelService, s.Region, signedAt)
	if err != nil {
		return err
	}
	su, err := url.Parse(signed)
	if err != nil {
		return err
	}
	if su.Query().Get("X-Amz-Signature") != got {
		return fmt.Errorf("signature does not match")
	}
	return nil
}
