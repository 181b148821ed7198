package engine

import (
	"net"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
)

// Default limits, used when the supervisor sends zero.
const (
	DefaultMaxRequestBytes = 64 << 20 // qemu-ga's limit for one request
	DefaultCommandTimeout  = 10 * time.Minute
	DefaultMaxSessions     = 64
	DefaultMaxInFlight     = 64
	// DefaultReadAheadMax bounds one read-ahead batch of a session (two
	// may be in flight): the data and its base64 text stay in the parser
	// until the host asks. Larger batches only add to the host's wait
	// when one is late (make bench).
	DefaultReadAheadMax     = 1 << 20
	pluginRestartWaitBudget = 10 * time.Second
	// DefaultPluginIdleExit: a command plugin unused this long is
	// released (plugin_idle_exit).
	DefaultPluginIdleExit = 30 * time.Second
	// releaseTimeout bounds the supervisor's answer to a release (it asks
	// the plugin, which waits up to a second for closed connections).
	releaseTimeout = 10 * time.Second
)

// Engine runs the sessions of every channel of a parser plugin: it serves
// the Parser gRPC service (Configure, ParseRequest) to the supervisor.
type Engine struct {
	pb.UnimplementedParserServer
	name     string
	dialects []dialect.Dialect
	broker   *plugin.GRPCBroker
	logger   hclog.Logger

	freeze freezeGuard
	// textPool recycles the base64 text of read-ahead results, blobPool
	// the decoded data of requests (guest-file-write), dialectPool the
	// requests and replies of the dialects (StreamSession.Buffers). All
	// three tell memory when they hand out a buffer, so whatever filled
	// them (a transfer, a burst of oversized input) is given back to the
	// system seconds after it stops.
	textPool    dataplane.BufferPool
	blobPool    dataplane.BufferPool
	dialectPool dataplane.BufferPool
	memory      dataplane.MemoryReturner

	mu        sync.RWMutex
	cfg       *pb.ConfigureParserRequest
	limits    resolvedLimits
	routes    map[string]*pb.Route
	channels  map[string]*channelState
	plugins   map[string]*pluginConn
	host      pb.HostClient
	inboxes   []*session.Inbox
	listeners []*net.UnixListener
	// routesReady is closed once the routes are complete (see
	// ConfigureParserRequest.routes_pending).
	routesReady chan struct{}
}

// Close stops the listeners handed over by exchanges and removes their
// socket files, as the exchange would have.
func (e *Engine) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ln := range e.listeners {
		ln.Close()
	}
	e.listeners = nil
}

type resolvedLimits struct {
	maxRequest     int64
	commandTimeout time.Duration
	maxSessions    int64
	maxInFlight    int64
	readAheadMax   int64 // 0: no read-ahead
	sessionMemory  int64
	channelMemory  int64
	writeTimeout   time.Duration // 0: none
	requestIdle    time.Duration // 0: none
	pluginIdleExit time.Duration // 0: plugins stay
}

// New returns the engine of the parser plugin called name, serving
// dialects; broker (the supervisor's go-plugin broker) may be nil in tests.
func New(name string, dialects []dialect.Dialect, logger hclog.Logger, broker *plugin.GRPCBroker) *Engine {
	e := &Engine{name: name, dialects: dialects, broker: broker, logger: logger, plugins: map[string]*pluginConn{}}
	e.freeze.logger, e.freeze.thaw = logger, e.thawOnOwnAccord
	e.textPool.Handed = e.memory.BulkDone
	e.blobPool.Handed = e.memory.BulkDone
	e.dialectPool.Handed = e.memory.BulkDone
	return e
}

func (e *Engine) dialectNamed(name string) dialect.Dialect {
	for _, d := range e.dialects {
		if d.Name() == name {
			return d
		}
	}
	return nil
}
