// A Go program whose goroutines wait in known places, for tracer's goroutine snapshot
// tests. It serves its own goroutine profile (net/http/pprof) on a loopback port as the
// oracle, and prints "ready PORT" once every goroutine it started has had time to park.
//
//	goroutines recv N     N goroutines blocked receiving on a channel, in main.receiver
//	goroutines pileup N   N goroutines blocked sending into a full channel (main.sendStat)
//	                      behind one goroutine blocked writing to a TCP peer that stopped
//	                      reading (main.writeToBackend); serves that peer's address
//	                      (host:port) at /backend
//	goroutines pingpong N N goroutines (main.pinger) each blocked most of the time receiving
//	                      on its own channel, fed every pingPeriod by one ticker goroutine;
//	                      prints "wakes W" every second (W receives in that second)
//	goroutines flood N    N pairs of goroutines passing a value back and forth as fast as
//	                      they can; prints "wakes W" every second (for probe overhead)
//	goroutines late N     N goroutines that block for good receiving on a channel
//	                      (main.lateReceiver), started lateStart after a SIGUSR1 (sent
//	                      once a recording has attached)
//	goroutines inlined N  N goroutines blocked receiving on a channel in main.awaitValue,
//	                      which the compiler inlines into main.inlinedReceiver
//	goroutines locked N   N goroutines blocked locking the global mutex main.statsMu
//	                      (main.lockStats), which main holds, and one waiting on the global
//	                      WaitGroup main.flushes (main.awaitFlushes), which never finishes
//	goroutines guarded N  N goroutines blocked locking the mutex of a stats client
//	                      (main.(*statsClient).send), whose holder is blocked writing to a
//	                      TCP peer that stopped reading with the lock held (and a read
//	                      lock of the settings), one waiting for that write on a
//	                      WaitGroup (main.awaitSends) and one for the settings' write
//	                      lock (main.updateSettings); serves that peer's address at
//	                      /backend, as pileup does
//	goroutines journaled N N goroutines blocked locking the mutex of a journal
//	                      (main.(*journal).append), whose holder is blocked in a write(2)
//	                      to a pipe nobody reads, a system call outside the netpoller,
//	                      with the lock held
//	goroutines logged N   N goroutines logging through the standard logger
//	                      (main.logStats, log.Printf) to stderr, a pipe whose reader, a
//	                      child process, never reads: one blocks in write(2) holding the
//	                      logger's mutex, the others wait for it; serves the child's pid at
//	                      /collector
//	goroutines relay N    N pairs of goroutines (main.relayer) passing a value back and
//	                      forth, each working relayWork on it before passing it on: one of
//	                      each pair waits for it at any time, in waits of tens of
//	                      microseconds, so nearly N x the time is blocked receiving
//	goroutines selected N N goroutines blocked sending into a full channel (main.queueStat)
//	                      whose one reader (main.drainSlowly) sleeps between reads, the
//	                      channel live in its frame; and N more parked in a select with a
//	                      send case on the same channel (main.queueOrDrop), its senders
//	                      too, the channel live in their frames as well
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// statsBuffer is the stats channel's capacity: senders beyond it pile up.
const statsBuffer = 16

// stalledPayload is far more than a loopback socket's send and receive buffers hold, so
// one write to a peer that never reads blocks for good.
const stalledPayload = 64 << 20

// settle is how long started goroutines get to reach their wait before "ready".
const settle = 300 * time.Millisecond

// pingPeriod is how long each pinger waits for its next value: long enough that the waits
// dominate, short enough that a 2-second recording sees a hundred of them.
const pingPeriod = 10 * time.Millisecond

// lateStart is how long "late" mode waits after its SIGUSR1 before its goroutines park:
// the recording that sent it sees them park, well inside it. A signal, not a time after
// "ready": a recording may take longer than any fixed time to attach.
const lateStart = time.Second

// wakes counts receives in pingpong and flood modes.
var wakes atomic.Int64

//go:noinline
func pinger(ch chan int) {
	for range ch {
		wakes.Add(1)
	}
}

func pingpong(n int) {
	chans := make([]chan int, n)
	for i := range chans {
		chans[i] = make(chan int)
		go pinger(chans[i])
	}
	go func() {
		for range time.Tick(pingPeriod) {
			for _, ch := range chans {
				ch <- 1
			}
		}
	}()
}

//go:noinline
func flooder(in, out chan int) {
	for v := range in {
		wakes.Add(1)
		out <- v
	}
}

// relayWork is how many steps of work a relayer does on the value before passing it on:
// tens of microseconds.
const relayWork = 20000

// workSink keeps the relayers' work from being optimized away.
var workSink atomic.Int64

//go:noinline
func work(steps int) {
	sum := 0
	for i := 0; i < steps; i++ {
		sum += i
	}
	workSink.Add(int64(sum))
}

//go:noinline
func relayer(in, out chan int) {
	for v := range in {
		work(relayWork)
		out <- v
	}
}

// startPairs starts n pairs of goroutines running pass, each passing a value to the other
// over a channel of its own, and gives each pair its value.
func startPairs(n int, pass func(in, out chan int)) {
	for i := 0; i < n; i++ {
		a, b := make(chan int), make(chan int)
		go pass(a, b)
		go pass(b, a)
		a <- 1
	}
}

// reportWakes prints the receives of each second, for throughput comparisons.
func reportWakes() {
	for range time.Tick(time.Second) {
		fmt.Printf("wakes %d\n", wakes.Swap(0))
	}
}

//go:noinline
func receiver(ch chan int) {
	<-ch
}

//go:noinline
func lateReceiver(ch chan int) {
	<-ch
}

// awaitValue is small and has no //go:noinline: the compiler inlines it into its caller, so
// its frame exists only in the inline tree (go build -gcflags=-m says "inlining call to
// awaitValue").
func awaitValue(ch chan int) int {
	return <-ch
}

//go:noinline
func inlinedReceiver(ch chan int) {
	awaitValue(ch)
}

func late(n int, start <-chan os.Signal) {
	<-start
	time.Sleep(lateStart)
	ch := make(chan int)
	for i := 0; i < n; i++ {
		go lateReceiver(ch)
	}
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

// statsMu and flushes are what "locked" mode's goroutines wait on: globals, so the tracer
// names them by their symbols.
var (
	statsMu sync.Mutex
	flushes sync.WaitGroup
)

//go:noinline
func lockStats() {
	statsMu.Lock()
	statsMu.Unlock()
}

//go:noinline
func awaitFlushes() {
	flushes.Wait()
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: goroutines recv|pileup|pingpong|flood|relay|late|inlined|locked|guarded|journaled|logged|selected N")
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
	case "pingpong":
		pingpong(n)
	case "flood":
		startPairs(n, flooder)
	case "relay":
		startPairs(n, relayer)
	case "late":
		start := make(chan os.Signal, 1)
		signal.Notify(start, syscall.SIGUSR1)
		go late(n, start)
	case "locked":
		statsMu.Lock()
		flushes.Add(1)
		for i := 0; i < n; i++ {
			go lockStats()
		}
		go awaitFlushes()
	case "guarded":
		guarded(n)
	case "journaled":
		journaled(n)
	case "logged":
		logged(n)
	case "selected":
		selected(n)
	case "inlined":
		ch := make(chan int)
		for i := 0; i < n; i++ {
			go inlinedReceiver(ch)
		}
	default:
		panic("unknown mode " + os.Args[1])
	}
	time.Sleep(settle)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("ready %d\n", listener.Addr().(*net.TCPAddr).Port)
	if os.Args[1] == "pingpong" || os.Args[1] == "flood" {
		go reportWakes()
	}
	panic(http.Serve(listener, nil))
}

// peer keeps the backend's accepted connection referenced, so it is never closed.
var peer net.Conn

// stalledBackend connects to a loopback backend that never reads (its accepted end is
// kept in peer) and serves the backend's address at /backend.
func stalledBackend() net.Conn {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	conn, err := net.Dial("tcp", backend.Addr().String())
	if err != nil {
		panic(err)
	}
	http.HandleFunc("/backend", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, conn.RemoteAddr().String())
	})
	if peer, err = backend.Accept(); err != nil {
		panic(err)
	}
	return conn
}

func pileup(n int) {
	conn := stalledBackend()
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

// statsClient sends stats over one connection, one send at a time: its mutex is held
// across the write (after the connection, so the mutex's address is not the client's).
type statsClient struct {
	conn net.Conn
	mu   sync.Mutex
}

//go:noinline
func (c *statsClient) send(stat []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.conn.Write(stat); err != nil {
		panic(err)
	}
}

//go:noinline
func stalledSend(client *statsClient, settings *sync.RWMutex, sends *sync.WaitGroup) {
	defer sends.Done()
	settings.RLock()
	defer settings.RUnlock()
	client.send(make([]byte, stalledPayload))
}

//go:noinline
func updateSettings(settings *sync.RWMutex) {
	settings.Lock()
	settings.Unlock()
}

//go:noinline
func awaitSends(sends *sync.WaitGroup) {
	sends.Wait()
}

func guarded(n int) {
	client := &statsClient{conn: stalledBackend()}
	settings, sends := new(sync.RWMutex), new(sync.WaitGroup)
	sends.Add(1)
	go stalledSend(client, settings, sends)
	go awaitSends(sends)
	// The stalled send holds the lock from here on; the n senders after it block.
	for client.mu.TryLock() {
		client.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	go updateSettings(settings)
	for i := 0; i < n; i++ {
		go client.send([]byte("stat"))
	}
}

// journal appends records to a descriptor, one append at a time: its mutex is held across
// the write, a plain system call (after the descriptor, so the mutex's address is not the
// journal's).
type journal struct {
	fd int
	mu sync.Mutex
}

//go:noinline
func (j *journal) append(record []byte) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, err := syscall.Write(j.fd, record); err != nil {
		panic(err)
	}
}

func journaled(n int) {
	// A blocking pipe (syscall.Pipe, not os.Pipe, which the netpoller would take): the
	// first append fills its buffer and blocks in write(2) for good, as nothing reads.
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		panic(err)
	}
	j := &journal{fd: fds[1]}
	go j.append(make([]byte, stalledPayload))
	// The stalled append holds the lock from here on; the n appends after it block.
	for j.mu.TryLock() {
		j.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < n; i++ {
		go j.append([]byte("record"))
	}
}

// logStats logs stats through the standard logger for good.
//
//go:noinline
func logStats(i int) {
	for {
		log.Printf("stat %d: %0100d", i, i)
	}
}

// logged points stderr at a pipe read by a collector that stalls, as a service's log
// collector may: a child process holding the pipe's read end that never reads it. The
// pipe is blocking (as a service's inherited stderr is), so the logger's writes are
// write(2) calls of their own, not the netpoller's.
func logged(n int) {
	reader, writer, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	collector := exec.Command("sleep", "infinity")
	collector.Stdin = reader
	collector.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := collector.Start(); err != nil {
		panic(err)
	}
	http.HandleFunc("/collector", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, collector.Process.Pid)
	})
	reader.Close()
	// Fd puts the descriptor back in blocking mode; stderr becomes the pipe's write end.
	if err := syscall.Dup3(int(writer.Fd()), 2, 0); err != nil {
		panic(err)
	}
	writer.Close()
	for i := 0; i < n+1; i++ {
		go logStats(i)
	}
}

// drainSlowly reads the stats queue, far slower than it is written.
//
//go:noinline
func drainSlowly(queue chan []byte) {
	for range queue {
		time.Sleep(time.Hour)
	}
}

//go:noinline
func queueStat(queue chan []byte) {
	queue <- make([]byte, 8)
}

// queueOrDrop offers a stat, or gives up when told to: parked in a select on the queue,
// one of its senders.
//
//go:noinline
func queueOrDrop(queue chan []byte, stop chan struct{}) {
	select {
	case queue <- make([]byte, 8):
	case <-stop:
	}
}

func selected(n int) {
	queue := make(chan []byte, statsBuffer)
	stop := make(chan struct{})
	go drainSlowly(queue)
	for i := 0; i < statsBuffer+1; i++ {
		queue <- make([]byte, 8) // the reader takes one and sleeps: the buffer fills
	}
	for i := 0; i < n; i++ {
		go queueStat(queue)
		go queueOrDrop(queue, stop)
	}
}
