module github.com/guest-agent/guest-agent/cmd/guestctl

go 1.26.0

require (
	github.com/guest-agent/guest-agent/shared v0.0.0
	github.com/hashicorp/go-hclog v1.6.3
	github.com/schollz/progressbar/v3 v3.19.1
	github.com/spf13/cobra v1.10.2
	golang.org/x/term v0.44.0
)

require (
	github.com/fatih/color v1.13.0 // indirect
	github.com/mattn/go-colorable v0.1.12 // indirect
	github.com/mattn/go-isatty v0.0.22 // indirect
	github.com/mitchellh/colorstring v0.0.0-20190213212951-d06e56a500db // indirect
	github.com/rivo/uniseg v0.4.7 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

require (
	github.com/cpuguy83/go-md2man/v2 v2.0.6 // indirect
	github.com/guest-agent/guest-agent/cmd/docgen v0.0.0
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/russross/blackfriday/v2 v2.1.0 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	go.yaml.in/yaml/v3 v3.0.4 // indirect
)

replace github.com/guest-agent/guest-agent/shared => ../../shared

replace github.com/guest-agent/guest-agent/cmd/docgen => ../docgen
