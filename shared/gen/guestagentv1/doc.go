// Package guestagentv1 is the Go code of the frozen v1 plugin protocol,
// generated from proto/guestagent/v1/guestagent.proto by `make proto`
// (protoc-gen-go, protoc-gen-go-grpc): the messages and gRPC services
// between the supervisor and its plugins, the data plane's frames, and the
// session events an exchange sends a parser. Do not edit the .pb.go files.
package guestagentv1
