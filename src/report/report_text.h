// Text helpers the report's tables, file names and SVG plots share.
#pragma once
#include <cctype>
#include <cstdio>
#include <string>

namespace vlmadapt::report::text {

// printf-style formatting of one number ("%.1f").
inline std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// Dataset and method names become file names: keep them to a safe alphabet.
inline std::string file_stem(const std::string& s) {
  std::string out;
  for (char ch : s) out += (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.') ? ch : '_';
  return out.empty() ? "_" : out;
}

inline std::string xml_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += ch;
    }
  }
  return out;
}

}  // namespace vlmadapt::report::text
