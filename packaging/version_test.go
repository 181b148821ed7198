package main

import (
	"os/exec"
	"strings"
	"testing"
)

func TestPackageVersion(t *testing.T) {
	for _, c := range []struct {
		describe string
		commits  int
		want     string
	}{
		{"v1.2.3", 0, "1.2.3"},
		{"1.2.3", 0, "1.2.3"},
		{"v1.2.3-dirty", 0, "1.2.3+dirty"},
		{"v1.2.3-5-gabc1234", 0, "1.2.3+git5.gabc1234"},
		{"v1.2.3-5-gabc1234-dirty", 0, "1.2.3+git5.gabc1234.dirty"},
		{"v1.2.3-rc1", 0, "1.2.3~rc1"},
		{"v1.2.3-rc1-2-gdeadbee", 0, "1.2.3~rc1+git2.gdeadbee"},
		{"537f947", 137, "0.0.0+git137.g537f947"},
		{"537f947-dirty", 137, "0.0.0+git137.g537f947.dirty"},
	} {
		got, err := PackageVersion(c.describe, c.commits)
		if err != nil || got != c.want {
			t.Errorf("PackageVersion(%q, %d) = %q, %v; want %q", c.describe, c.commits, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "dev", "v1.2.3 x", "537f947"} {
		if v, err := PackageVersion(bad, 0); err == nil {
			t.Errorf("PackageVersion(%q) = %q, want an error", bad, v)
		}
	}
}

// Versions sort as the history does, for dpkg and rpm alike (checked with
// the tools themselves by the package test); here the textual shape.
func TestPackageVersionHasNoHyphen(t *testing.T) {
	v, err := PackageVersion("v2.0.0-beta-1-3-g0123456-dirty", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range v {
		if r == '-' {
			t.Fatalf("%q has a hyphen", v)
		}
	}
}

// Versions of later builds are newer packages for dpkg and rpm alike: the
// tools' own comparison.
func TestPackageVersionOrder(t *testing.T) {
	history := []struct {
		describe string
		commits  int
	}{
		{"537f947", 137}, {"537f947-dirty", 137}, {"be90835", 149},
		{"v1.0.0-rc1", 0}, {"v1.0.0-rc1-3-g0123456", 0}, {"v1.0.0", 0}, {"v1.0.0-dirty", 0},
		{"v1.0.0-1-gabcdef0", 0}, {"v1.0.0-12-gabcdef1", 0}, {"v1.0.1", 0}, {"v1.10.0", 0},
	}
	var versions []string
	for _, h := range history {
		v, err := PackageVersion(h.describe, h.commits)
		if err != nil {
			t.Fatal(err)
		}
		versions = append(versions, v)
	}
	_, rpmErr := exec.LookPath("rpm")
	for i := 1; i < len(versions); i++ {
		older, newer := versions[i-1], versions[i]
		if err := exec.Command("dpkg", "--compare-versions", newer+"-1", "gt", older+"-1").Run(); err != nil {
			t.Errorf("dpkg: %s is not newer than %s", newer, older)
		}
		if rpmErr != nil {
			continue
		}
		out, err := exec.Command("rpm", "--eval", `%{lua: print(rpm.vercmp("`+newer+`", "`+older+`"))}`).Output()
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("rpm: %s is not newer than %s (%s, %v)", newer, older, out, err)
		}
	}
	if rpmErr != nil {
		t.Log("rpm not installed: order checked with dpkg only")
	}
}
