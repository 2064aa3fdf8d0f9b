// Command libtailscale exports Tailscale's libtailscale C API (tailscale.h) over tsnet, as
// a c-archive linked into openbox's Rust binaries. Same names and semantics as upstream:
// handles are small integers; listeners and connections are file descriptors (one end of
// a socketpair bridged to the tailnet connection), so the caller can poll them.
package main

// #include <stdlib.h>
// #include <string.h>
import "C"

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"tailscale.com/net/tsaddr"
	"tailscale.com/tsnet"
)

func main() {}

type server struct {
	s       *tsnet.Server
	mu      sync.Mutex
	lastErr string
	logOut  io.Writer
	// started: tsnet's Close must not be called on a server that never started.
	started bool
	// cancelUp stops a running tailscale_up; upDone closes when it has returned, so
	// that tailscale_close never races it.
	cancelUp context.CancelFunc
	upDone   chan struct{}
}

// markStarted notes that tsnet may now have started (Up, Start, Listen and Dial all
// start it).
func (s *server) markStarted() {
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
}

var (
	mu       sync.Mutex
	servers        = map[C.int]*server{}
	nextID   C.int = 1
	remoteOf       = map[C.int]string{} // accepted connection fd → remote address, until asked for
)

func get(sd C.int) *server {
	mu.Lock()
	defer mu.Unlock()
	return servers[sd]
}

func (s *server) fail(err error) C.int {
	s.mu.Lock()
	s.lastErr = err.Error()
	s.mu.Unlock()
	return -1
}

// strayCredentials are variables tsnet would read a credential from; openbox passes
// credentials only through this API.
var strayCredentials = []string{"TS_AUTHKEY", "TS_AUTH_KEY", "TS_CLIENT_SECRET", "TS_CLIENT_ID", "TS_ID_TOKEN", "TS_AUDIENCE"}

// tailscale_new makes a node handle. It refuses (-2) unless the process started with
// TS_NO_LOGS_NO_SUPPORT=true and none of the stray credential variables: Go reads its
// knobs once, at start, so they cannot be fixed from here (and writing the environment
// while the host program may read it is not safe).
//
//export tailscale_new
func tailscale_new() C.int {
	if os.Getenv("TS_NO_LOGS_NO_SUPPORT") != "true" {
		return -2
	}
	for _, name := range strayCredentials {
		if os.Getenv(name) != "" {
			return -2
		}
	}
	mu.Lock()
	defer mu.Unlock()
	id := nextID
	nextID++
	srv := &server{s: &tsnet.Server{}, logOut: io.Discard}
	logf := func(format string, args ...any) {
		srv.mu.Lock()
		out := srv.logOut
		srv.mu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
	}
	srv.s.Logf = logf
	srv.s.UserLogf = logf
	servers[id] = srv
	return id
}

func setString(sd C.int, value *C.char, set func(*tsnet.Server, string)) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	set(srv.s, C.GoString(value))
	return 0
}

//export tailscale_set_dir
func tailscale_set_dir(sd C.int, dir *C.char) C.int {
	return setString(sd, dir, func(s *tsnet.Server, v string) { s.Dir = v })
}

//export tailscale_set_hostname
func tailscale_set_hostname(sd C.int, hostname *C.char) C.int {
	return setString(sd, hostname, func(s *tsnet.Server, v string) { s.Hostname = v })
}

//export tailscale_set_authkey
func tailscale_set_authkey(sd C.int, authkey *C.char) C.int {
	return setString(sd, authkey, func(s *tsnet.Server, v string) { s.AuthKey = v })
}

// tailscale_set_control_url sets the coordination server. (One served over plain http
// serves its DERP relay over plain http too: the process must then have started with
// TS_DEBUG_USE_DERP_HTTP=1, which tailnet::ensure_environment sees to.)
//
//export tailscale_set_control_url
func tailscale_set_control_url(sd C.int, url *C.char) C.int {
	return setString(sd, url, func(s *tsnet.Server, v string) { s.ControlURL = v })
}

//export tailscale_set_ephemeral
func tailscale_set_ephemeral(sd C.int, ephemeral C.int) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	srv.s.Ephemeral = ephemeral != 0
	return 0
}

// tailscale_set_logfd sends the node's logs to fd (which it then owns); -1 discards them.
//
//export tailscale_set_logfd
func tailscale_set_logfd(sd C.int, fd C.int) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	var out io.Writer = io.Discard
	if fd >= 0 {
		out = os.NewFile(uintptr(fd), "tailscale-log")
	}
	srv.mu.Lock()
	srv.logOut = out
	srv.mu.Unlock()
	return 0
}

//export tailscale_start
func tailscale_start(sd C.int) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	srv.markStarted()
	if err := srv.s.Start(); err != nil {
		return srv.fail(err)
	}
	return 0
}

// tailscale_up starts the node and waits until it is running on the tailnet.
//
//export tailscale_up
func tailscale_up(sd C.int) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	srv.mu.Lock()
	srv.started = true
	srv.cancelUp, srv.upDone = cancel, done
	srv.mu.Unlock()
	defer close(done)
	if _, err := srv.s.Up(ctx); err != nil {
		return srv.fail(err)
	}
	return 0
}

//export tailscale_close
func tailscale_close(sd C.int) C.int {
	mu.Lock()
	srv := servers[sd]
	delete(servers, sd)
	mu.Unlock()
	if srv == nil {
		return -1
	}
	srv.mu.Lock()
	cancel, done, started, logOut := srv.cancelUp, srv.upDone, srv.started, srv.logOut
	srv.mu.Unlock()
	if cancel != nil { // a running Up ends first: Close must not race it
		cancel()
		<-done
	}
	var err error
	if started {
		err = srv.s.Close()
	}
	if f, ok := logOut.(*os.File); ok {
		f.Close()
	}
	if err != nil {
		return srv.fail(err)
	}
	return 0
}

func writeString(buf *C.char, buflen C.size_t, value string) C.int {
	if buflen == 0 || C.size_t(len(value))+1 > buflen {
		return C.int(syscall.ERANGE)
	}
	out := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(buflen))
	copy(out, value)
	out[len(value)] = 0
	return 0
}

// tailscale_getips writes the node's tailnet addresses, comma-separated.
//
//export tailscale_getips
func tailscale_getips(sd C.int, buf *C.char, buflen C.size_t) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	ip4, ip6 := srv.s.TailscaleIPs()
	list := ""
	if ip4.IsValid() {
		list = ip4.String()
	}
	if ip6.IsValid() {
		if list != "" {
			list += ","
		}
		list += ip6.String()
	}
	if list == "" {
		return srv.fail(fmt.Errorf("the node has no tailnet address yet; is it up?"))
	}
	if rc := writeString(buf, buflen, list); rc != 0 {
		return srv.fail(fmt.Errorf("buffer too small for %q", list))
	}
	return 0
}

//export tailscale_errmsg
func tailscale_errmsg(sd C.int, buf *C.char, buflen C.size_t) C.int {
	srv := get(sd)
	if srv == nil {
		return writeString(buf, buflen, "no such tailscale server")
	}
	srv.mu.Lock()
	msg := srv.lastErr
	srv.mu.Unlock()
	return writeString(buf, buflen, msg)
}

// bridge makes a socketpair, copies between one end and conn until either side ends, and
// returns the other end's fd for the caller.
func bridge(conn net.Conn) (C.int, error) {
	fds, err := socketpair(syscall.SOCK_STREAM)
	if err != nil {
		return -1, err
	}
	ours := os.NewFile(uintptr(fds[0]), "tailscale-conn")
	local, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		syscall.Close(fds[1])
		return -1, err
	}
	// Each direction half-closes when it ends; once both have, both ends are released.
	var both sync.WaitGroup
	both.Add(2)
	quietRelease.Do(func() { go releaseWhenQuiet() })
	// A side that stays silent after the other has finished gets a minute, not forever.
	const linger = time.Minute
	go func() {
		defer both.Done()
		io.Copy(counted{conn}, local)
		if c, ok := conn.(interface{ CloseWrite() error }); ok {
			c.CloseWrite()
		} else {
			conn.Close()
		}
		conn.SetReadDeadline(time.Now().Add(linger))
	}()
	go func() {
		defer both.Done()
		io.Copy(counted{local}, conn)
		local.(*net.UnixConn).CloseWrite()
		local.SetReadDeadline(time.Now().Add(linger))
	}()
	go func() {
		both.Wait()
		conn.Close()
		local.Close()
	}()
	return C.int(fds[1]), nil
}

// moved counts the bytes through every bridged connection.
var moved atomic.Int64

// counted is a writer that adds what it writes to moved.
type counted struct{ io.Writer }

func (c counted) Write(p []byte) (int, error) {
	n, err := c.Writer.Write(p)
	moved.Add(int64(n))
	return n, err
}

var quietRelease sync.Once

// releaseWhenQuiet gives the memory a fast stream grew (the network stack's buffers, the
// garbage it left) back to the system once the bridges have moved at least 16 MiB since
// the last time and then little (keep-alives, a short call) for a while: the soft limit
// lets a stream run at full speed, and a process at rest should not keep what it used.
func releaseWhenQuiet() {
	const every, enough, little = 5 * time.Second, 16 << 20, 1 << 20
	var seen, released int64
	for range time.Tick(every) {
		now := moved.Load()
		quiet := now-seen < little
		seen = now
		if quiet && now-released >= enough {
			debug.FreeOSMemory()
			released = now
		}
	}
}

// dialTimeout bounds tailscale_dial: tsnet's Dial waits, without limit, for the node to
// be running.
const dialTimeout = 30 * time.Second

// tailscale_dial connects to a tailnet address (IP:PORT). Only tailnet addresses are
// dialled: tsnet would send any other through the host's network.
//
//export tailscale_dial
func tailscale_dial(sd C.int, network *C.char, addr *C.char, connOut *C.int) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	target, err := netip.ParseAddrPort(C.GoString(addr))
	if err != nil || !tsaddr.IsTailscaleIP(target.Addr()) {
		return srv.fail(fmt.Errorf("%q is not a tailnet address (IP:PORT)", C.GoString(addr)))
	}
	srv.markStarted()
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	conn, err := srv.s.Dial(ctx, C.GoString(network), target.String())
	if err != nil {
		return srv.fail(err)
	}
	fd, err := bridge(conn)
	if err != nil {
		conn.Close()
		return srv.fail(err)
	}
	*connOut = fd
	return 0
}

// tailscale_listen listens on the tailnet; each accepted connection's fd is passed over
// the returned listener fd (SCM_RIGHTS), where tailscale_accept receives it.
//
//export tailscale_listen
func tailscale_listen(sd C.int, network *C.char, addr *C.char, listenerOut *C.int) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	srv.markStarted()
	ln, err := srv.s.Listen(C.GoString(network), C.GoString(addr))
	if err != nil {
		return srv.fail(err)
	}
	fds, err := socketpair(listenerSocketType)
	if err != nil {
		ln.Close()
		return srv.fail(err)
	}
	ours, theirs := fds[0], fds[1]
	// The caller closing its end (or the process giving it up) stops the listener: the
	// read sees end of file.
	go func() {
		buf := make([]byte, 1)
		for {
			n, err := syscall.Read(ours, buf)
			if err == syscall.EINTR {
				continue
			}
			if n <= 0 {
				ln.Close()
				return
			}
		}
	}()
	go func() {
		defer syscall.Close(ours)
		defer ln.Close()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			fd, err := bridge(conn)
			if err != nil {
				conn.Close()
				continue
			}
			// The remote address travels with the descriptor.
			rights := syscall.UnixRights(int(fd))
			err = syscall.Sendmsg(ours, []byte(conn.RemoteAddr().String()), rights, nil, 0)
			syscall.Close(int(fd))
			if err != nil { // the caller closed its listener
				return
			}
		}
	}()
	*listenerOut = C.int(theirs)
	return 0
}

// tailscale_accept waits for the next connection on a listener fd.
//
//export tailscale_accept
func tailscale_accept(listener C.int, connOut *C.int) C.int {
	buf := make([]byte, 256)
	oob := make([]byte, syscall.CmsgSpace(4))
	n, oobn, err := recvmsg(int(listener), buf, oob)
	if err != nil {
		return C.int(err.(syscall.Errno))
	}
	if n == 0 && oobn == 0 { // the listener ended (its node closed)
		return C.int(syscall.ECONNABORTED)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return C.int(syscall.EBADMSG)
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) == 0 {
		return C.int(syscall.EBADMSG)
	}
	received(fds)
	mu.Lock()
	remoteOf[C.int(fds[0])] = string(buf[:n])
	mu.Unlock()
	*connOut = C.int(fds[0])
	return 0
}

// tailscale_getremoteaddr writes the tailnet address a connection accepted on listener
// came from. It can be asked once per connection (then it is forgotten, so that a
// long-lived listener keeps nothing per connection).
//
//export tailscale_getremoteaddr
func tailscale_getremoteaddr(listener C.int, conn C.int, buf *C.char, buflen C.size_t) C.int {
	mu.Lock()
	addr, ok := remoteOf[conn]
	delete(remoteOf, conn)
	mu.Unlock()
	if !ok {
		return C.int(syscall.EBADF)
	}
	return writeString(buf, buflen, addr)
}

func init() {
	log.SetOutput(io.Discard) // tsnet's fallback logger, when no log fd is set
	// A soft memory limit, so that a fast stream's garbage is collected before the process
	// grows far: openboxd is a long-lived background process. What a stream grew is given
	// back once it has ended (releaseWhenQuiet). Measured with cmd/tsnetbench (see
	// docs/benchmarks.md): 128 MiB held a stream to half the speed of 256 MiB; no limit ran
	// no faster than 256 MiB but peaked at 240 MiB.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(256 << 20)
	}
}

// tailscale_loopback starts a SOCKS5 proxy and LocalAPI server on the host's loopback
// interface; it writes their address and the two credentials (each buffer at least 33
// bytes: 32 characters and a NUL).
//
//export tailscale_loopback
func tailscale_loopback(sd C.int, addrOut *C.char, addrLen C.size_t, proxyCredOut *C.char, localAPICredOut *C.char) C.int {
	srv := get(sd)
	if srv == nil {
		return -1
	}
	addr, proxyCred, localAPICred, err := srv.s.Loopback()
	if err != nil {
		return srv.fail(err)
	}
	if writeString(addrOut, addrLen, addr) != 0 ||
		writeString(proxyCredOut, 33, proxyCred) != 0 ||
		writeString(localAPICredOut, 33, localAPICred) != 0 {
		return srv.fail(fmt.Errorf("loopback: an output buffer is too small"))
	}
	return 0
}
