package fakeaws

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
)

const ec2NS = "http://ec2.amazonaws.com/doc/2016-11-15/"

var instanceIDRE = regexp.MustCompile(`^i-[a-f0-9]{8,17}$`)

// stateCodes are EC2's instance state codes.
var stateCodes = map[string]int{
	"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80,
}

type ec2Error struct {
	XMLName   xml.Name `xml:"Response"`
	Code      string   `xml:"Errors>Error>Code"`
	Message   string   `xml:"Errors>Error>Message"`
	RequestID string   `xml:"RequestID"`
}

func writeEC2Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(xml.Header))
	_ = xml.NewEncoder(w).Encode(ec2Error{Code: code, Message: msg, RequestID: requestID()})
}

func writeXML(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	_, _ = w.Write([]byte(xml.Header))
	_ = xml.NewEncoder(w).Encode(v)
}

type xmlState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type xmlInstance struct {
	InstanceID       string   `xml:"instanceId"`
	InstanceState    xmlState `xml:"instanceState"`
	PrivateIPAddress string   `xml:"privateIpAddress,omitempty"`
	AvailabilityZone string   `xml:"placement>availabilityZone"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

type describeInstancesResponse struct {
	XMLName      xml.Name         `xml:"DescribeInstancesResponse"`
	XMLNS        string           `xml:"xmlns,attr"`
	RequestID    string           `xml:"requestId"`
	Reservations []xmlReservation `xml:"reservationSet>item"`
}

type rebootInstancesResponse struct {
	XMLName   xml.Name `xml:"RebootInstancesResponse"`
	XMLNS     string   `xml:"xmlns,attr"`
	RequestID string   `xml:"requestId"`
	Return    bool     `xml:"return"`
}

// instanceIDs collects InstanceId.N parameters in order.
func instanceIDs(r *http.Request) []string {
	type kv struct {
		n  int
		id string
	}
	var got []kv
	for k, v := range r.PostForm {
		var n int
		if _, err := fmt.Sscanf(k, "InstanceId.%d", &n); err == nil && len(v) > 0 {
			got = append(got, kv{n, v[0]})
		}
	}
	sort.Slice(got, func(i, j int) bool { return got[i].n < got[j].n })
	ids := make([]string, len(got))
	for i, g := range got {
		ids[i] = g.id
	}
	return ids
}

func (s *Server) serveEC2(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeEC2Error(w, http.StatusBadRequest, "InvalidParameterValue", err.Error())
		return
	}
	action := r.PostForm.Get("Action")
	s.countCall(action)
	switch action {
	case "DescribeInstances":
		s.describeInstances(w, r)
	case "RebootInstances":
		s.rebootInstances(w, r)
	default:
		writeEC2Error(w, http.StatusBadRequest, "InvalidAction", fmt.Sprintf("The action %s is not valid for this web service.", action))
	}
}

// checkIDs returns the instances named, or writes EC2's error for the first
// malformed or unknown id.
func (s *Server) checkIDs(w http.ResponseWriter, ids []string) ([]Instance, bool) {
	var out []Instance
	for _, id := range ids {
		if !instanceIDRE.MatchString(id) {
			writeEC2Error(w, http.StatusBadRequest, "InvalidInstanceID.Malformed", fmt.Sprintf("Invalid id: %q", id))
			return nil, false
		}
		in, ok := s.lookup(id)
		if !ok {
			writeEC2Error(w, http.StatusBadRequest, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id))
			return nil, false
		}
		out = append(out, in)
	}
	return out, true
}

func (s *Server) describeInstances(w http.ResponseWriter, r *http.Request) {
	ids := instanceIDs(r)
	if len(ids) == 0 {
		ids = s.sortedIDs()
	}
	found, ok := s.checkIDs(w, ids)
	if !ok {
		return
	}
	resp := describeInstancesResponse{XMLNS: ec2NS, RequestID: requestID()}
	for _, in := range found {
		x := xmlInstance{
			InstanceID:       in.ID,
			InstanceState:    xmlState{Code: stateCodes[in.State], Name: in.State},
			AvailabilityZone: in.AvailabilityZone,
		}
		// EC2 reports no private address for a terminated instance.
		if in.State != "terminated" {
			x.PrivateIPAddress = in.PrivateIP
		}
		resp.Reservations = append(resp.Reservations, xmlReservation{
			ReservationID: "r-" + strings.TrimPrefix(in.ID, "i-"),
			Instances:     []xmlInstance{x},
		})
	}
	writeXML(w, resp)
}

func (s *Server) rebootInstances(w http.ResponseWriter, r *http.Request) {
	ids := instanceIDs(r)
	if len(ids) == 0 {
		writeEC2Error(w, http.StatusBadRequest, "MissingParameter", "The request must contain the parameter InstanceId")
		return
	}
	found, ok := s.checkIDs(w, ids)
	if !ok {
		return
	}
	for _, in := range found {
		if in.State != "running" {
			writeEC2Error(w, http.StatusBadRequest, "IncorrectState",
				fmt.Sprintf("The instance '%s' is not in a state from which it can be rebooted.", in.ID))
			return
		}
	}
	for _, in := range found {
		if in.OnReboot != nil {
			go in.OnReboot()
		}
	}
	writeXML(w, rebootInstancesResponse{XMLNS: ec2NS, RequestID: requestID(), Return: true})
}
