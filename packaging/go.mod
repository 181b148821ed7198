module github.com/guest-agent/guest-agent/packaging

go 1.26.0
