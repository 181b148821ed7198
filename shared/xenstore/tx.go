package xenstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"
)

// MaxTransactionAttempts bounds how often Transaction runs its function when
// commits keep failing with EAGAIN, so a context without deadline cannot
// spin for ever.
const MaxTransactionAttempts = 32

// maxBackoff caps the pause between attempts; conflicts in xenstore are
// short-lived, so waiting longer only adds latency.
const maxBackoff = 16 * time.Millisecond

// abortTimeout bounds the TRANSACTION_END F sent after the caller's context
// ended; without it an abandoned transaction would hold xenstored's
// per-connection transaction quota.
const abortTimeout = 5 * time.Second

// Tx is an open transaction: its reads and writes see a snapshot of the
// store and become visible to others only when the transaction commits.
type Tx struct {
	c     *Client
	id    uint32
	ended atomic.Bool
}

var errTxEnded = fmt.Errorf("xenstore: transaction already ended: %w", ErrInvalid)

// ID returns the transaction id xenstored allocated.
func (tx *Tx) ID() uint32 { return tx.id }

func (tx *Tx) check() error {
	if tx.ended.Load() {
		return errTxEnded
	}
	return nil
}

// Read is Client.Read inside the transaction.
func (tx *Tx) Read(ctx context.Context, path string) ([]byte, error) {
	if err := tx.check(); err != nil {
		return nil, err
	}
	return tx.c.read(ctx, tx.id, path)
}

// Write is Client.Write inside the transaction.
func (tx *Tx) Write(ctx context.Context, path string, value []byte) error {
	if err := tx.check(); err != nil {
		return err
	}
	return tx.c.write(ctx, tx.id, path, value)
}

// Mkdir is Client.Mkdir inside the transaction.
func (tx *Tx) Mkdir(ctx context.Context, path string) error {
	if err := tx.check(); err != nil {
		return err
	}
	return tx.c.simple(ctx, OpMkdir, tx.id, path)
}

// Rm is Client.Rm inside the transaction.
func (tx *Tx) Rm(ctx context.Context, path string) error {
	if err := tx.check(); err != nil {
		return err
	}
	return tx.c.simple(ctx, OpRm, tx.id, path)
}

// Directory is Client.Directory inside the transaction.
func (tx *Tx) Directory(ctx context.Context, path string) ([]string, error) {
	if err := tx.check(); err != nil {
		return nil, err
	}
	return tx.c.directory(ctx, tx.id, path)
}

// Transaction runs fn in a transaction and commits it. When the commit fails
// with EAGAIN (another writer got in between), or fn returns an error
// matching ErrAgain, the transaction is thrown away and fn runs again in a
// fresh one, after a short randomised back-off, up to
// MaxTransactionAttempts times. fn must therefore do nothing outside the
// transaction that cannot be repeated. Any other error from fn aborts the
// transaction and is returned as is.
func (c *Client) Transaction(ctx context.Context, fn func(tx *Tx) error) error {
	backoff := time.Millisecond
	for attempt := 1; ; attempt++ {
		tx, err := c.startTx(ctx)
		if err != nil {
			return err
		}
		ferr := fn(tx)
		tx.ended.Store(true)
		if ferr != nil {
			c.abortTx(ctx, tx.id)
			if !errors.Is(ferr, ErrAgain) {
				return ferr
			}
			err = ferr
		} else {
			err = c.endTx(ctx, tx.id, true)
			if err == nil {
				return nil
			}
			if !errors.Is(err, ErrAgain) {
				return err
			}
		}
		if attempt >= MaxTransactionAttempts {
			return fmt.Errorf("xenstore: transaction gave up after %d attempts: %w", attempt, err)
		}
		// Jitter keeps two clients conflicting on the same nodes from
		// retrying in lockstep.
		d := backoff/2 + rand.N(backoff/2+1)
		if backoff < maxBackoff {
			backoff *= 2
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("xenstore: transaction retry: %w (last attempt: %w)", ctx.Err(), err)
		}
	}
}

func (c *Client) startTx(ctx context.Context) (*Tx, error) {
	// TRANSACTION_START takes one empty string: a lone NUL.
	_, cl, err := c.send(OpTransactionStart, 0, []byte{0})
	if err != nil {
		return nil, err
	}
	select {
	case <-cl.done:
	case <-ctx.Done():
		// The transaction may open after we stop waiting: end it then, or it
		// would count against xenstored's quota until the connection closes.
		go func() {
			<-cl.done
			if p, err := checkReply(OpTransactionStart, "", cl); err == nil {
				if txid, err := parseTxID(p); err == nil {
					c.abortTx(context.Background(), txid)
				}
			}
		}()
		return nil, fmt.Errorf("xenstore: TRANSACTION_START: %w", ctx.Err())
	}
	p, err := checkReply(OpTransactionStart, "", cl)
	if err != nil {
		return nil, err
	}
	txid, err := parseTxID(p)
	if err != nil {
		return nil, err
	}
	return &Tx{c: c, id: txid}, nil
}

func parseTxID(p []byte) (uint32, error) {
	s := SplitStrings(p)
	if len(s) == 0 {
		return 0, fmt.Errorf("%w: empty TRANSACTION_START reply", ErrProtocol)
	}
	n, err := strconv.ParseUint(s[0], 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%w: TRANSACTION_START reply %q is not a transaction id", ErrProtocol, s[0])
	}
	return uint32(n), nil
}

func (c *Client) endTx(ctx context.Context, id uint32, commit bool) error {
	flag := "F"
	if commit {
		flag = "T"
	}
	_, err := c.request(ctx, OpTransactionEnd, id, JoinStrings(flag), "")
	return err
}

// abortTx ends a transaction without committing, even when ctx has ended.
func (c *Client) abortTx(ctx context.Context, id uint32) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	_ = c.endTx(actx, id, false)
}
