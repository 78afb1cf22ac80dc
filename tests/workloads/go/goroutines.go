// A Go program whose goroutines wait in known places, for tracer's goroutine snapshot
// tests. It serves its own goroutine profile (net/http/pprof) on a loopback port as the
// oracle, and prints "ready PORT" once every goroutine it started has had time to park.
//
//	goroutines recv N     N goroutines blocked receiving on a channel, in main.receiver
//	goroutines pileup N   N goroutines blocked sending into a full channel (main.sendStat)
//	                      behind one goroutine blocked writing to a TCP peer that stopped
//	                      reading (main.writeToBackend)
package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// statsBuffer is the stats channel's capacity: senders beyond it pile up.
const statsBuffer = 16

// stalledPayload is far more than a loopback socket's send and receive buffers hold, so
// one write to a peer that never reads blocks for good.
const stalledPayload = 64 << 20

// settle is how long started goroutines get to reach their wait before "ready".
const settle = 300 * time.Millisecond

//go:noinline
func receiver(ch chan int) {
	<-ch
}

//go:noinline
func sendStat(stats chan []byte, stat []byte, sent *atomic.Int64) {
	stats <- stat
	sent.Add(1)
}

//go:noinline
func writeToBackend(conn net.Conn, stats chan []byte) {
	for stat := range stats {
		if _, err := conn.Write(stat); err != nil {
			panic(err)
		}
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: goroutines recv|pileup N")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil {
		panic(err)
	}
	switch os.Args[1] {
	case "recv":
		ch := make(chan int)
		for i := 0; i < n; i++ {
			go receiver(ch)
		}
	case "pileup":
		pileup(n)
	default:
		panic("unknown mode " + os.Args[1])
	}
	time.Sleep(settle)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("ready %d\n", listener.Addr().(*net.TCPAddr).Port)
	panic(http.Serve(listener, nil))
}

// peer keeps the backend's accepted connection referenced, so it is never closed.
var peer net.Conn

func pileup(n int) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	conn, err := net.Dial("tcp", backend.Addr().String())
	if err != nil {
		panic(err)
	}
	if peer, err = backend.Accept(); err != nil {
		panic(err)
	}
	stats := make(chan []byte, statsBuffer)
	stats <- make([]byte, stalledPayload)
	go writeToBackend(conn, stats)
	for len(stats) != 0 {
		time.Sleep(time.Millisecond)
	}
	// The writer holds the one stalled payload; the first statsBuffer senders fill the
	// channel and return, the n after them block.
	var sent atomic.Int64
	for i := 0; i < statsBuffer+n; i++ {
		go sendStat(stats, []byte("stat"), &sent)
	}
	for sent.Load() != statsBuffer {
		time.Sleep(time.Millisecond)
	}
}
