// Command tsnetbench moves bytes over one TCP connection between two tsnet nodes, with
// nothing of openbox's in between: the numbers `bench/run` holds openbox over the tailnet
// against. One process serves (joins, listens, sends --bytes of zeros to each connection
// on port 7777 and echoes what comes on port 7778), another fetches (joins, times --pings
// one-byte round trips on 7778, then reads 7777 to the end and prints how fast).
//
//	tsnetbench -role serve -dir D1 -control URL -authkey K            prints "ready IP:PORT"
//	tsnetbench -role fetch -dir D2 -control URL -authkey K -addr IP:PORT -bytes N
//
// Built from this module with the same `ts_omit_` tags as the library (omitted.txt), and
// like it, it refuses to start without TS_NO_LOGS_NO_SUPPORT=true.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"tailscale.com/tsnet"
)

// zeros reads as an endless run of zero bytes, as /dev/zero does.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// residentKiB is this process's resident memory now (VmRSS), or 0 where /proc has none.
func residentKiB() int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	var kib int64
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fmt.Sscan(rest, &kib)
		}
	}
	return kib
}

func main() {
	role := flag.String("role", "", "serve or fetch")
	dir := flag.String("dir", "", "the node's state directory")
	control := flag.String("control", "", "the control server's URL")
	authkey := flag.String("authkey", "", "a pre-authorized key")
	addr := flag.String("addr", "", "fetch: the serving node's IP:PORT")
	bytes := flag.Int64("bytes", 250_000_000, "serve: bytes sent on each connection")
	memLimit := flag.Int64("memlimit-mib", 256, "the Go soft memory limit, as openbox's library sets it (0: none)")
	pings := flag.Int("pings", 300, "fetch: one-byte round trips timed before the stream")
	release := flag.Bool("release", true, "fetch: give memory back to the system once the stream has ended, as the library does")
	flag.Parse()
	if *pings < 1 {
		log.Fatal("tsnetbench: -pings must be at least 1")
	}
	if os.Getenv("TS_NO_LOGS_NO_SUPPORT") != "true" {
		log.Fatal("tsnetbench: set TS_NO_LOGS_NO_SUPPORT=true")
	}
	if *memLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(*memLimit << 20)
	}
	s := &tsnet.Server{
		Dir:        *dir,
		Hostname:   "tsnetbench-" + *role,
		ControlURL: *control,
		AuthKey:    *authkey,
		Ephemeral:  true,
		Logf:       func(string, ...any) {},
		UserLogf:   func(string, ...any) {},
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	status, err := s.Up(ctx)
	if err != nil {
		log.Fatalf("tsnetbench: joining the tailnet: %v", err)
	}
	switch *role {
	case "serve":
		ln, err := s.Listen("tcp", ":7777")
		if err != nil {
			log.Fatalf("tsnetbench: listening: %v", err)
		}
		echo, err := s.Listen("tcp", ":7778")
		if err != nil {
			log.Fatalf("tsnetbench: listening: %v", err)
		}
		go func() {
			for {
				conn, err := echo.Accept()
				if err != nil {
					return
				}
				go func(c net.Conn) {
					defer c.Close()
					io.Copy(c, c)
				}(conn)
			}
		}()
		fmt.Printf("ready %s:7777\n", status.TailscaleIPs[0])
		for {
			conn, err := ln.Accept()
			if err != nil {
				log.Fatalf("tsnetbench: accepting: %v", err)
			}
			go func(c net.Conn) {
				defer c.Close()
				io.CopyN(c, zeros{}, *bytes)
			}(conn)
		}
	case "fetch":
		rtt := roundTrips(ctx, s, *addr, *pings)
		conn, err := s.Dial(ctx, "tcp", *addr)
		if err != nil {
			log.Fatalf("tsnetbench: dialling %s: %v", *addr, err)
		}
		start := time.Now()
		n, err := io.Copy(io.Discard, conn)
		took := time.Since(start).Seconds()
		if err != nil {
			log.Fatalf("tsnetbench: reading: %v", err)
		}
		conn.Close()
		if *release {
			debug.FreeOSMemory()
		}
		var usage syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
		json.NewEncoder(os.Stdout).Encode(map[string]any{
			"bytes": n, "seconds": took, "mb_per_s": float64(n) / took / 1e6,
			// One byte there and back on a connection already open, after a warm-up.
			"rtt_median_ms": rtt[len(rtt)/2], "rtt_p99_ms": rtt[len(rtt)*99/100],
			// This (the receiving) node's resident memory: its peak, and after the stream.
			"max_rss_kib":   usage.Maxrss,
			"rss_after_kib": residentKiB(),
		})
	default:
		log.Fatal("tsnetbench: -role serve or -role fetch")
	}
}

// roundTrips times n one-byte round trips to the echo port beside addr (7778), after ten
// untimed ones, and returns them sorted, in milliseconds.
func roundTrips(ctx context.Context, s *tsnet.Server, addr string, n int) []float64 {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		log.Fatalf("tsnetbench: -addr %q: %v", addr, err)
	}
	conn, err := s.Dial(ctx, "tcp", net.JoinHostPort(host, "7778"))
	if err != nil {
		log.Fatalf("tsnetbench: dialling the echo port: %v", err)
	}
	defer conn.Close()
	one := []byte{1}
	var times []float64
	for i := range n + 10 {
		start := time.Now()
		if _, err := conn.Write(one); err != nil {
			log.Fatalf("tsnetbench: writing a ping: %v", err)
		}
		if _, err := io.ReadFull(conn, one); err != nil {
			log.Fatalf("tsnetbench: reading a ping: %v", err)
		}
		if i >= 10 {
			times = append(times, float64(time.Since(start).Microseconds())/1000)
		}
	}
	slices.Sort(times)
	return times
}
