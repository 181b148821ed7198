package engine

import (
	"encoding/base64"
	"encoding/json"

	"github.com/guest-agent/guest-agent/shared/dataplane"
	"github.com/guest-agent/guest-agent/shared/dialect"
	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/guest-agent/guest-agent/shared/internal/wire"
)

// extractBlobArg moves a base64 argument out of the JSON into req.Blob,
// decoded strictly, so the command plugin receives raw bytes. The member is
// left in the arguments as an empty string, so the plugin still tells a
// missing argument from an empty one.
func extractBlobArg(req *pb.RunRequest, member string, pool *dataplane.BufferPool) *dialect.Outcome {
	members, err := wire.SplitObject(req.ArgsJson)
	if err != nil {
		return failOutcome(&dialect.Failure{Kind: dialect.FailArgsNotObject, Command: req.Command})
	}
	idx := -1
	for i, m := range members {
		if m.Key == member {
			idx = i
		}
	}
	if idx < 0 {
		return nil // the plugin reports the missing parameter
	}
	text, ok := wire.StringValue(members[idx].Value)
	if !ok {
		return failOutcome(&dialect.Failure{Kind: dialect.FailBlobNotString, Command: req.Command, Member: member})
	}
	blob := pool.Get(base64.StdEncoding.DecodedLen(len(text)))
	n, err := wire.DecodeBase64Strict(blob, text)
	if err != nil {
		pool.Put(blob)
		return failOutcome(&dialect.Failure{Kind: dialect.FailBlobNotBase64, Command: req.Command, Member: member})
	}
	// Rebuild the (small) rest of the arguments around an empty string.
	args := make([]byte, 0, 64)
	args = append(args, '{')
	for i, m := range members {
		if i > 0 {
			args = append(args, ',')
		}
		// JSON's quoting, not Go's: strconv writes \x01 and \a, which are
		// not JSON, so the plugin would refuse the whole object.
		key, _ := json.Marshal(m.Key)
		args = append(args, key...)
		args = append(args, ':')
		if i == idx {
			args = append(args, `""`...)
		} else {
			args = append(args, m.Value...)
		}
	}
	args = append(args, '}')
	req.ArgsJson, req.Blob = args, blob[:n]
	return nil
}
