package fakeaws

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

const jsonContentType = "application/x-amz-json-1.1"

// The documented constraints of SendSSHPublicKey's fields.
var (
	eicInstanceIDRE = regexp.MustCompile(`^i-[a-f0-9]+$`)
	osUserRE        = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9\@\._-]{0,30}[A-Za-z0-9\$_-]?$`)
	azRE            = regexp.MustCompile(`^(\w+-){2,3}\d+\w+$`)
)

func writeJSONError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", jsonContentType)
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.Header().Set("X-Amzn-RequestId", requestID())
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": typ, "Message": msg})
}

type sendSSHPublicKeyInput struct {
	InstanceID       string `json:"InstanceId"`
	InstanceOSUser   string `json:"InstanceOSUser"`
	SSHPublicKey     string `json:"SSHPublicKey"`
	AvailabilityZone string `json:"AvailabilityZone"`
}

func (s *Server) serveInstanceConnect(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	action, ok := strings.CutPrefix(target, "AWSEC2InstanceConnectService.")
	if !ok || action != "SendSSHPublicKey" {
		writeJSONError(w, http.StatusBadRequest, "UnknownOperationException", "unknown operation "+target)
		return
	}
	n := s.countCall(action)
	var in sendSSHPublicKeyInput
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil {
		writeJSONError(w, http.StatusBadRequest, "SerializationException", err.Error())
		return
	}

	s.mu.Lock()
	throttle := s.faults.ThrottleSendKeyNext > 0 ||
		(s.faults.ThrottleSendKeyEvery >= 2 && n%s.faults.ThrottleSendKeyEvery == 0)
	if s.faults.ThrottleSendKeyNext > 0 {
		s.faults.ThrottleSendKeyNext--
	}
	s.mu.Unlock()
	if throttle {
		writeJSONError(w, http.StatusBadRequest, "ThrottlingException", "Rate exceeded")
		return
	}

	switch {
	case len(in.InstanceID) < 10 || len(in.InstanceID) > 32 || !eicInstanceIDRE.MatchString(in.InstanceID):
		writeJSONError(w, http.StatusBadRequest, "InvalidArgsException", "InstanceId is invalid")
		return
	case !osUserRE.MatchString(in.InstanceOSUser):
		writeJSONError(w, http.StatusBadRequest, "InvalidArgsException", "InstanceOSUser is invalid")
		return
	case len(in.SSHPublicKey) < 80 || len(in.SSHPublicKey) > 4096:
		writeJSONError(w, http.StatusBadRequest, "InvalidArgsException",
			fmt.Sprintf("SSHPublicKey length must be between 80 and 4096, got %d", len(in.SSHPublicKey)))
		return
	case in.AvailabilityZone != "" && !azRE.MatchString(in.AvailabilityZone):
		writeJSONError(w, http.StatusBadRequest, "InvalidArgsException", "AvailabilityZone is invalid")
		return
	}

	s.mu.Lock()
	inst, found := s.instances[in.InstanceID]
	var state, az string
	if found {
		state, az = inst.State, inst.AvailabilityZone
	}
	s.mu.Unlock()
	switch {
	case !found:
		writeJSONError(w, http.StatusNotFound, "EC2InstanceNotFoundException",
			fmt.Sprintf("Instance %s not found", in.InstanceID))
		return
	case state != "running":
		writeJSONError(w, http.StatusBadRequest, "EC2InstanceStateInvalidException",
			fmt.Sprintf("Instance %s is not in a valid state (%s)", in.InstanceID, state))
		return
	case in.AvailabilityZone != "" && in.AvailabilityZone != az:
		writeJSONError(w, http.StatusBadRequest, "InvalidArgsException",
			fmt.Sprintf("Instance %s is not in availability zone %s", in.InstanceID, in.AvailabilityZone))
		return
	}

	s.mu.Lock()
	now := s.now()
	live := inst.keys[:0]
	for _, k := range inst.keys {
		if now.Before(k.expires) {
			live = append(live, k)
		}
	}
	inst.keys = append(live, pushedKey{user: in.InstanceOSUser, key: strings.TrimSpace(in.SSHPublicKey), expires: now.Add(KeyLifetime)})
	inst.pushes++
	s.mu.Unlock()

	w.Header().Set("Content-Type", jsonContentType)
	w.Header().Set("X-Amzn-RequestId", requestID())
	_ = json.NewEncoder(w).Encode(map[string]any{"RequestId": requestID(), "Success": true})
}
