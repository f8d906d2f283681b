#include "io/tensorboard_event.h"

#include "tensorboard_event.pb.h"  // generated from src/io/tensorboard_event.proto

namespace sdtune::io::tensorboard_event {
namespace {

tensorboard::Event event_at(double wall_time, int64_t step) {
  tensorboard::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  return event;
}

}  // namespace

std::string file_version(double wall_time) {
  tensorboard::Event event = event_at(wall_time, 0);
  event.set_file_version("brain.Event:2");
  return event.SerializeAsString();
}

std::string scalar(double wall_time, int64_t step, const std::string& tag, float value) {
  tensorboard::Event event = event_at(wall_time, step);
  tensorboard::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(value);
  return event.SerializeAsString();
}

std::string image(double wall_time, int64_t step, const std::string& tag, int32_t height,
                  int32_t width, const std::string& png) {
  tensorboard::Event event = event_at(wall_time, step);
  tensorboard::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  tensorboard::Summary::Image* image = v->mutable_image();
  image->set_height(height);
  image->set_width(width);
  image->set_colorspace(3);  // RGB
  image->set_encoded_image_string(png);
  return event.SerializeAsString();
}

}  // namespace sdtune::io::tensorboard_event
