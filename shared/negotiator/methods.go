package negotiator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Service is what a side serves: negotiator's two public methods. Only
// these are callable (the original exposes every public method of its
// object).
type Service interface {
	// ListCommands is list_commands(): the names of the commands.
	ListCommands(ctx context.Context) ([]string, error)
	// Execute is execute(*command, input=None, capture=True): the command's
	// output, a string.
	Execute(ctx context.Context, argv []string, input *string) (string, error)
}

// Call decodes a request's arguments and calls the method of svc it names.
// The error of a failed call is the text of the error reply.
func Call(ctx context.Context, svc Service, req Request) (any, error) {
	switch req.Method {
	case "list_commands":
		if len(req.Args) > 0 || len(req.Kw) > 0 {
			return nil, fmt.Errorf("list_commands() takes no arguments")
		}
		return svc.ListCommands(ctx)
	case "execute":
		argv := make([]string, len(req.Args))
		for i, a := range req.Args {
			if err := json.Unmarshal(a, &argv[i]); err != nil {
				return nil, fmt.Errorf("execute(): argument %d is not a string: %s", i+1, a)
			}
		}
		if len(argv) == 0 {
			return nil, fmt.Errorf("execute() needs a command name")
		}
		var input *string
		for _, k := range sortedKeys(req.Kw) {
			v := req.Kw[k]
			switch k {
			case "input":
				if string(v) == "null" {
					continue
				}
				var s string
				if err := json.Unmarshal(v, &s); err != nil {
					return nil, fmt.Errorf("execute(): input is not a string: %s", v)
				}
				input = &s
			case "capture":
				var c bool
				if err := json.Unmarshal(v, &c); err != nil || !c {
					return nil, fmt.Errorf("execute(): only capture=True is supported")
				}
			default:
				return nil, fmt.Errorf("execute() got an unexpected keyword argument '%s'", k)
			}
		}
		return svc.Execute(ctx, argv, input)
	default:
		// negotiator's own wording, which its callers may match.
		return nil, errors.New("Method " + quoteMethod(req.Method) + " not supported")

	}
}

func quoteMethod(m string) string {
	if len(m) > 100 {
		m = m[:100] + "..."
	}
	return strings.ToValidUTF8(m, "\uFFFD")
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Answer turns one request body into one reply body: every failure, a
// malformed request included, is an error reply.
func Answer(ctx context.Context, svc Service, body []byte) []byte {
	req, err := DecodeRequest(body)
	if err != nil {
		return EncodeError(err.Error())
	}
	result, err := Call(ctx, svc, req)
	if err != nil {
		return EncodeError(err.Error())
	}
	reply, err := EncodeResult(result)
	if err != nil {
		return EncodeError(err.Error())
	}
	return reply
}

// RunnerService serves a Runner, adding env to each command's environment
// (the host's NEGOTIATOR_GUEST).
type RunnerService struct {
	Runner *Runner
	Env    []string
}

// ListCommands implements Service.
func (s RunnerService) ListCommands(context.Context) ([]string, error) { return s.Runner.List() }

// Execute implements Service.
func (s RunnerService) Execute(ctx context.Context, argv []string, input *string) (string, error) {
	return s.Runner.Execute(ctx, argv, input, s.Env)
}
