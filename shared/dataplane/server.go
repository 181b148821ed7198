package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

// Handler runs one request. It is called concurrently; it must not keep
// req.Blob after returning (the buffer is recycled). done, if not nil, is
// called once the response has been written (its blob may be recycled then).
type Handler func(ctx context.Context, req *pb.RunRequest) (resp *pb.RunResponse, done func())

// Serve accepts parser connections on ln and runs their requests with h until
// ctx ends or ln fails. Requests on one connection run concurrently, so a slow
// command never holds up the next one.
func Serve(ctx context.Context, ln net.Listener, h Handler, logger hclog.Logger) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("dataplane: accept: %w", err)
		}
		GrowSendBuffer(conn)
		go serveConn(ctx, conn, h, logger)
	}
}

func serveConn(ctx context.Context, conn net.Conn, h Handler, logger hclog.Logger) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer conn.Close()
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	var wmu sync.Mutex
	var wscratch []byte
	respond := func(resp *pb.RunResponse) {
		blob := resp.Blob
		resp.Blob = nil
		wmu.Lock()
		var err error
		wscratch, err = writeFrame(conn, resp, blob, wscratch)
		wmu.Unlock()
		if err != nil {
			logger.Debug("dataplane: reply lost", "error", err)
			cancel()
		}
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	var rscratch []byte
	var pool BufferPool
	for {
		req := &pb.RunRequest{}
		var blob []byte
		var err error
		rscratch, blob, err = readFrame(r, req, rscratch, &pool)
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				logger.Warn("dataplane: connection dropped", "error", err)
			}
			return
		}
		req.Blob = blob
		go func() {
			resp, done := h(ctx, req)
			if blob != nil {
				pool.Put(blob)
			}
			if resp == nil {
				resp = &pb.RunResponse{Error: &pb.Error{Class: "GenericError", Desc: "command returned no response"}}
			}
			resp.Id = req.Id
			respond(resp)
			if done != nil {
				done()
			}
		}()
	}
}
