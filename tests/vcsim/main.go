// Command vcsim is the vCenter simulator the vsphere platform's tests run
// against: govmomi's simulator (the version Debian packages) with the PBM
// (SPBM) and vAPI endpoints registered, served over TLS on loopback.
//
// Design note: the tests start one process per simulated vCenter (source and
// destination), so everything a test needs to reach it goes into one JSON
// file written once the server answers (-state): URL, port, credentials, the
// path of the PEM certificate (its own CA) and each datastore's local
// directory.  Datastores are directories on this machine; a file written
// there is a file on the datastore, which is how the sink's shadow disks
// become visible to the simulated destination vCenter.  The simulator names
// these directories itself (govcsim-<DC>-<DS>-<random>); -datastore-dir only
// chooses where they are created, and the state file says where they are.
//
// Fault injection: tests make a real vSphere API call fail on demand (a
// shadow VM's power-on during cutover, say).  The server's handler is wrapped
// before the state file is written: POST /liftshift-test/faults arms a fault
// (a SOAP method, a vim fault type, a message, how many times, and an
// optional substring the request body must contain, e.g. a VM's moref);
// GET lists what is armed and how often each fired; DELETE disarms all.  A
// SOAP request whose first Body element names an armed method is answered
// with a SOAP fault shaped like the simulator's own (HTTP 500, detail
// <TypeFault xsi:type="Type"/> with the type's fields unset), so clients
// parse it into their vim fault class; every other request passes through
// untouched.
// The control path takes no credentials but only loopback peers.
//
// Build (no module download: Debian's golang-github-vmware-govmomi-dev):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o vcsim ./tests/vcsim
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	_ "github.com/vmware/govmomi/pbm/simulator" // registers /pbm (SPBM)
	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers /rest and /api (tags)
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

type datastore struct {
	Name string `json:"name"`
	Dir  string `json:"dir"`
}

type state struct {
	URL        string      `json:"url"`
	Host       string      `json:"host"`
	Port       int         `json:"port"`
	Username   string      `json:"username"`
	Password   string      `json:"password"`
	CertFile   string      `json:"cert_file"`
	Datastores []datastore `json:"datastores"`
	Pid        int         `json:"pid"`
}

// selfSigned writes a fresh ECDSA P-256 certificate for 127.0.0.1 and
// localhost (its own CA, so clients can verify it with it as their CA file)
// and returns the key pair.
func selfSigned(certFile string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vcsim", Organization: []string{"liftshift tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := writeFile(certFile, certPEM); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// writeFile writes data under a temporary name and renames it into place, so
// a reader polling for the file never sees half of it.
func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// faultsPath is the fault-injection control endpoint (see the design note).
const faultsPath = "/liftshift-test/faults"

// armedFault is one armed fault: the JSON a test POSTs, and GET's answer
// (with Fired filled in).
type armedFault struct {
	Method  string `json:"method"`
	Fault   string `json:"fault"`
	Message string `json:"message"`
	Count   int    `json:"count"`
	Match   string `json:"match"`
	Fired   int    `json:"fired"`
}

// faultInjector wraps the simulator's handler: it serves faultsPath and
// answers SOAP calls matching an armed fault with that fault.
type faultInjector struct {
	next http.Handler

	mu     sync.Mutex
	faults []*armedFault // in arming order; exhausted ones stay listed until DELETE
}

func (fi *faultInjector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == faultsPath {
		fi.serveControl(w, r)
		return
	}
	if r.Method != http.MethodPost || !fi.anyArmed() {
		fi.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if f := fi.take(soapMethod(body), body); f != nil {
		log.Printf("fault injected: %s answered with %s (%q), %d of %d fired", f.Method, f.Fault, f.Message, f.Fired, f.Count)
		writeSOAPFault(w, f)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	fi.next.ServeHTTP(w, r)
}

func (fi *faultInjector) anyArmed() bool {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	for _, f := range fi.faults {
		if f.Fired < f.Count {
			return true
		}
	}
	return false
}

// take consumes one firing of the first armed fault matching method and
// body, and returns a copy of it; nil when none matches.
func (fi *faultInjector) take(method string, body []byte) *armedFault {
	if method == "" {
		return nil
	}
	fi.mu.Lock()
	defer fi.mu.Unlock()
	for _, f := range fi.faults {
		if f.Method == method && f.Fired < f.Count && bytes.Contains(body, []byte(f.Match)) {
			f.Fired++
			c := *f
			return &c
		}
	}
	return nil
}

func (fi *faultInjector) serveControl(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		http.Error(w, "fault injection is for loopback clients only", http.StatusForbidden)
		return
	}
	switch r.Method {
	case http.MethodGet:
		fi.mu.Lock()
		list := make([]armedFault, 0, len(fi.faults))
		for _, f := range fi.faults {
			list = append(list, *f)
		}
		fi.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(list)
	case http.MethodPost:
		f, err := parseFault(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fi.mu.Lock()
		fi.faults = append(fi.faults, f)
		fi.mu.Unlock()
		log.Printf("fault armed: %s -> %s (%q) x%d, match %q", f.Method, f.Fault, f.Message, f.Count, f.Match)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		fi.mu.Lock()
		fi.faults = nil
		fi.mu.Unlock()
		log.Printf("faults cleared")
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		http.Error(w, "GET, POST or DELETE", http.StatusMethodNotAllowed)
	}
}

// parseFault reads and checks one fault to arm: a method, a vim25 fault
// type this govmomi knows, and a count of at least 1.
func parseFault(body io.Reader) (*armedFault, error) {
	f := &armedFault{Count: 1}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(f); err != nil {
		return nil, fmt.Errorf("fault JSON: %v", err)
	}
	if f.Method == "" || f.Fault == "" {
		return nil, fmt.Errorf("fault JSON: method and fault are required")
	}
	if f.Count < 1 {
		return nil, fmt.Errorf("fault JSON: count must be at least 1, not %d", f.Count)
	}
	kind, ok := types.TypeFunc()(f.Fault)
	if !ok || !reflect.PtrTo(kind).Implements(reflect.TypeOf((*types.BaseMethodFault)(nil)).Elem()) {
		return nil, fmt.Errorf("fault JSON: %q is not a vim25 fault type", f.Fault)
	}
	f.Fired = 0
	return f, nil
}

const soapEnvelopeNS = "http://schemas.xmlsoap.org/soap/envelope/"

// soapMethod is the local name of the first element inside a SOAP request's
// Envelope/Body (the method called), or "" when body is no SOAP envelope.
func soapMethod(body []byte) string {
	d := xml.NewDecoder(bytes.NewReader(body))
	env, ok := firstChild(d)
	if !ok || env.Name.Space != soapEnvelopeNS || env.Name.Local != "Envelope" {
		return ""
	}
	for {
		el, ok := firstChild(d)
		if !ok {
			return ""
		}
		if el.Name.Space == soapEnvelopeNS && el.Name.Local == "Body" {
			method, ok := firstChild(d)
			if !ok {
				return ""
			}
			return method.Name.Local
		}
		if d.Skip() != nil { // a Header, say
			return ""
		}
	}
}

// firstChild reads up to the next start element at the current level; false
// at the enclosing element's end or on malformed XML.
func firstChild(d *xml.Decoder) (xml.StartElement, bool) {
	for {
		tok, err := d.Token()
		if err != nil {
			return xml.StartElement{}, false
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return t, true
		case xml.EndElement:
			return xml.StartElement{}, false
		}
	}
}

// The fault envelope is the simulator's own (simulator.go: soapEnvelope,
// soapFault, faultDetail), copied because those types are unexported: the
// soapenv prefix, the xsi namespace for xsi:type, and a detail element named
// <Type>Fault in urn:vim25.
type faultEnvelope struct {
	XMLName xml.Name `xml:"soapenv:Envelope"`
	Enc     string   `xml:"xmlns:soapenc,attr"`
	Env     string   `xml:"xmlns:soapenv,attr"`
	XSD     string   `xml:"xmlns:xsd,attr"`
	XSI     string   `xml:"xmlns:xsi,attr"`
	Fault   struct {
		Code   string `xml:"faultcode"`
		String string `xml:"faultstring"`
		Detail struct {
			Fault faultDetail
		} `xml:"detail"`
	} `xml:"soapenv:Body>soapenv:Fault"`
}

// faultDetail is the detail element of a fault of the type named Kind.  It
// is written with no content: the type's fields stay unset on the client (an
// empty struct would write required fields such as TaskInProgress.task as
// empty elements, which clients refuse to parse).
type faultDetail struct {
	Kind string
}

// MarshalXML names the element "${Type}Fault", as the simulator does.
func (d faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	start.Name.Local = d.Kind + "Fault"
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:" + vim25.Namespace},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: d.Kind})
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

func writeSOAPFault(w http.ResponseWriter, f *armedFault) {
	env := faultEnvelope{
		Enc: "http://schemas.xmlsoap.org/soap/encoding/",
		Env: soapEnvelopeNS,
		XSD: "http://www.w3.org/2001/XMLSchema",
		XSI: "http://www.w3.org/2001/XMLSchema-instance",
	}
	env.Fault.Code = "ServerFaultCode"
	env.Fault.String = f.Message
	env.Fault.Detail.Fault.Kind = f.Fault
	var out bytes.Buffer
	out.WriteString(xml.Header)
	if err := xml.NewEncoder(&out).Encode(&env); err != nil {
		log.Printf("encoding the injected %s: %v", f.Fault, err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = w.Write(out.Bytes())
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (port 0: a free port)")
	statePath := flag.String("state", "", "JSON file written once serving: url, port, credentials, cert, datastores (required)")
	certFile := flag.String("cert", "", "where to write the generated PEM certificate (default: beside -state)")
	username := flag.String("username", "user", "the only user name accepted")
	password := flag.String("password", "pass", "the only password accepted")
	dsDir := flag.String("datastore-dir", "", "directory in which each datastore's local directory is created (default: $TMPDIR; removed at exit only when defaulted)")
	clusters := flag.Int("clusters", 1, "clusters per datacenter")
	hosts := flag.Int("hosts", 1, "hosts per cluster")
	standalone := flag.Int("standalone-hosts", 0, "standalone hosts per datacenter")
	vms := flag.Int("vms", 2, "VMs per resource pool (cluster root pool and each standalone host)")
	datastores := flag.Int("datastores", 1, "datastores (every VM the model creates is on LocalDS_0)")
	pools := flag.Int("pools", 0, "child resource pools per cluster")
	portgroups := flag.Int("portgroups", 1, "distributed port groups per datacenter (besides the standard 'VM Network')")
	autostart := flag.Bool("autostart", true, "power on the VMs the model creates")
	idle := flag.Duration("session-idle-timeout", 0, "expire sessions idle this long (0: never)")
	flag.Parse()
	if *statePath == "" {
		log.Fatal("-state is required")
	}
	if *certFile == "" {
		*certFile = filepath.Join(filepath.Dir(*statePath), "vcsim-cert.pem")
	}
	started := time.Now()

	owned := *dsDir == ""
	if !owned {
		if err := os.MkdirAll(*dsDir, 0o755); err != nil {
			log.Fatal(err)
		}
		// The model creates each datastore with ioutil.TempDir("", ...).
		if err := os.Setenv("TMPDIR", *dsDir); err != nil {
			log.Fatal(err)
		}
	}

	m := simulator.VPX()
	m.Datacenter = 1
	m.Cluster = *clusters
	m.ClusterHost = *hosts
	m.Host = *standalone
	m.Machine = *vms
	m.Datastore = *datastores
	m.Pool = *pools
	m.Portgroup = *portgroups
	m.Autostart = *autostart
	simulator.SessionIdleTimeout = *idle
	if err := m.Create(); err != nil {
		log.Fatalf("creating the inventory: %v", err)
	}

	cert, err := selfSigned(*certFile)
	if err != nil {
		log.Fatalf("certificate: %v", err)
	}
	m.Service.RegisterEndpoints = true
	m.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	s := m.Service.NewServer()
	// NewServer has already started serving, but the handler can still be
	// swapped without a race: nobody knows the port until the state file
	// below is written, so no client can have connected yet.
	s.Server.Config.Handler = &faultInjector{next: s.Server.Config.Handler}

	st := state{
		URL:      fmt.Sprintf("https://%s/sdk", s.URL.Host),
		Host:     s.URL.Hostname(),
		Username: *username,
		Password: *password,
		CertFile: *certFile,
		Pid:      os.Getpid(),
	}
	if st.Port, err = strconv.Atoi(s.URL.Port()); err != nil {
		log.Fatalf("port of %s: %v", s.URL, err)
	}
	for _, obj := range simulator.Map.All("Datastore") {
		ds := obj.(*simulator.Datastore)
		st.Datastores = append(st.Datastores, datastore{Name: ds.Name, Dir: ds.Info.GetDatastoreInfo().Url})
	}
	sort.Slice(st.Datastores, func(i, j int) bool { return st.Datastores[i].Name < st.Datastores[j].Name })
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	if err := writeFile(*statePath, append(data, '\n')); err != nil {
		log.Fatalf("writing %s: %v", *statePath, err)
	}
	log.Printf("vcsim serving %s (inventory and TLS ready in %s)", st.URL, time.Since(started).Round(time.Millisecond))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	got := <-sig
	log.Printf("%s: stopping", got)
	s.Close()
	if owned {
		m.Remove()
	}
}
