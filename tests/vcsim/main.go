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
// Build (no module download: Debian's golang-github-vmware-govmomi-dev):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o vcsim ./tests/vcsim
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	_ "github.com/vmware/govmomi/pbm/simulator" // registers /pbm (SPBM)
	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers /rest and /api (tags)
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
