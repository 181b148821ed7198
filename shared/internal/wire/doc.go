// Package wire holds the codecs the SDK and the parser engine share: the
// validating JSON scan (SplitObject, StringValue), the fast base64 codec,
// qemu-ga's argument decoding (DecodeArgs) and the error type with its
// classes. Plugin authors reach them through package sdk, which re-exports
// them; the engine uses them directly, since sdk imports the engine.
package wire
